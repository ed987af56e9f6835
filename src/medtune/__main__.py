import sys

from medtune.cli.main import main

sys.exit(main())
