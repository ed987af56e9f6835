"""Model-loading arguments shared by ``chat``, ``infer``, ``serve api`` and ``serve web``.

Example::

    medtune infer --model runs/sft --load-in int8-cpu --input q.jsonl --output a.jsonl
"""

from __future__ import annotations

from medtune.errors import MedtuneError

RAG_EXTRAS = ("bm25s", "jieba", "Stemmer")  # what --rag needs (the [rag] extra)
LOAD_IN = ("none", "8bit", "4bit", "int8-cpu")


def add_model_args(p, adapter: bool = True) -> None:
    """Add --model, --adapter (unless ``adapter`` is False), --template, --device, --dtype,
    --load-in, --trust-remote-code."""
    p.add_argument("--model", required=True, help="model dir (full or adapter) or hub id")
    if adapter:
        p.add_argument("--adapter", help="LoRA adapter dir to apply on --model")
    p.add_argument("--template", default="auto", help="override the checkpoint's chat template")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N (default auto)")
    p.add_argument("--dtype", default="auto", help="auto|float32|bfloat16|float16 (default auto)")
    p.add_argument("--load-in", default="none", choices=LOAD_IN,
                   help="8bit/4bit: bitsandbytes on a CUDA GPU; int8-cpu: dynamic int8 linear layers "
                        "on CPU (faster, slightly less exact); default none")
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model")


def add_backend_args(p) -> None:
    """Add --backend hf|vllm and --tensor-parallel-size (``infer`` and ``serve api``)."""
    p.add_argument("--backend", default="hf", choices=("hf", "vllm"), help="generation engine")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per model (vllm)")


def model_kwargs(args) -> dict:
    """Return ``ChatModel.load`` / engine keyword arguments from parsed model arguments."""
    return {"adapter": getattr(args, "adapter", None), "template": args.template, "device": args.device,
            "dtype": args.dtype, "load_in": None if args.load_in == "none" else args.load_in,
            "trust_remote_code": args.trust_remote_code}


def add_service_args(p, policy_default: str) -> None:
    """Add --policy and --audit-log (``chat``, ``infer``, ``serve api``, ``serve web``)."""
    p.add_argument("--policy", default=policy_default, metavar="POLICY.yaml|default|none",
                   help="serve-time safety policy: a policy YAML, 'default' (the bundled zh + en one: "
                        "emergencies, self-harm, overdoses, controlled drugs, diagnosis demands) or 'none' "
                        "(default: " + ("the bundled policy)" if policy_default == "default" else f"{policy_default})"))
    p.add_argument("--audit-log", metavar="PATH.jsonl|db",
                   help="append one JSONL record per request (model, adapter, template, policy actions, "
                        "latency; personal data redacted); 'db': into the serving database's audit table "
                        "(serve api / serve web)")


def service_from_args(args, info: dict, inputs: dict | None = None, outputs: dict | None = None,
                      serving_db: bool = False):
    """Return the ReplyService of ``--policy`` / ``--audit-log`` / ``--rag``; the audit log may not be one of
    ``inputs`` or ``outputs`` (``{flag: path}``) or the policy file. Called before the model loads.
    ``--audit-log db`` is for commands with a serving database (``serving_db``): its sink is
    attached by :func:`attach_audit_db` once the database is open."""
    from medtune.files import guard_outputs
    from medtune.inference.service import build_service

    if args.audit_log == "db":
        if not serving_db:
            raise MedtuneError("--audit-log db: only serve api / serve web keep a database; "
                               "give --audit-log PATH.jsonl")
        return build_service(args.policy, None, info, rag=load_retriever(args))
    if args.audit_log:
        policy_file = None if args.policy in ("default", "none") else args.policy
        guard_outputs({"--audit-log": args.audit_log, **(outputs or {})},
                      {**(inputs or {}), "--policy": policy_file, "--rag": getattr(args, "rag", None)})
    return build_service(args.policy, args.audit_log, info, rag=load_retriever(args))


def attach_audit_db(service, args, store) -> None:
    """Make the serving database ``store`` the audit sink of ``--audit-log db`` (refused without one)."""
    if args.audit_log != "db":
        return
    if store is None:
        raise MedtuneError("--audit-log db: no serving database to write to (--db none); "
                           "give --audit-log PATH.jsonl or a --db")
    service.audit = store


def load_retriever(args):
    """Return the ``Retriever`` that ``--rag`` / ``--rag-k`` ask for, or None; checked before the model loads."""
    if getattr(args, "rag", None) is None:
        if getattr(args, "rag_k", 3) != 3:
            raise MedtuneError("--rag-k needs --rag INDEX")
        return None
    if args.rag_k < 1:
        raise MedtuneError(f"--rag-k {args.rag_k}: must be at least 1")
    from medtune.cli.faults import require_extras

    require_extras(*RAG_EXTRAS)
    from medtune.inference.rag import Retriever

    return Retriever.load(args.rag, k=args.rag_k)
