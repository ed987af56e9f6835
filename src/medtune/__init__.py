"""medtune: turn open causal LMs into domain assistants (medicine first).

Heavy libraries load on first use, so ``import medtune`` and ``medtune --help`` stay fast.
"""

__version__ = "0.1.0"
__all__ = ["ChatModel", "__version__"]


def __getattr__(name):
    if name == "ChatModel":
        from medtune.inference.chat import ChatModel

        return ChatModel
    raise AttributeError(f"module 'medtune' has no attribute {name!r}")
