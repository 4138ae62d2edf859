"""``python -m nni_ts.testing.k8s serve --port N --state-dir D``: run a fake cluster by hand."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from .cluster import CONTROLLERS, FakeCluster
from .kubelet import Node
from .util import parse_quantity


def _node(text: str) -> Node:
    """``name[:cpu=8,memory=32Gi,gpus=2,pods=110]``"""
    name, _, rest = text.partition(":")
    kwargs: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in ("cpu", "memory", "gpus", "pods"):
            raise argparse.ArgumentTypeError(
                f"--node {text!r}: expected name[:cpu=N,memory=Q,gpus=N,pods=N], got the item {item!r}."
            )
        try:
            parse_quantity(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--node {text!r}: {exc}") from None
        kwargs[key] = int(value) if key in ("gpus", "pods") else value
    if not name:
        raise argparse.ArgumentTypeError(f"--node {text!r}: the node needs a name.")
    return Node(name, **kwargs)  # type: ignore[arg-type]


def _export(text: str) -> tuple[tuple[str, str], Path]:
    """``server:/export/path=/local/dir``"""
    left, sep, local = text.partition("=")
    server, sep2, path = left.partition(":")
    if not sep or not sep2 or not server or not path.startswith("/"):
        raise argparse.ArgumentTypeError(f"--nfs {text!r}: expected SERVER:/EXPORT/PATH=LOCAL_DIR.")
    return (server, path), Path(local)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nni_ts.testing.k8s",
        description="A fake Kubernetes cluster for tests (see docs/fake-cluster.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the fake cluster until interrupted")
    serve.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        help="directory for the kubeconfig, pod logs and local stand-ins of volumes",
    )
    serve.add_argument(
        "--crd",
        type=Path,
        action="append",
        default=[],
        help="a CustomResourceDefinition YAML file to load (repeatable)",
    )
    serve.add_argument(
        "--no-builtin-crds",
        action="store_true",
        help="do not load the built-in minimal TFJob, PyTorchJob and Framework CRDs",
    )
    serve.add_argument(
        "--node",
        type=_node,
        action="append",
        default=[],
        help="a node, name[:cpu=8,memory=32Gi,gpus=2] (repeatable; default one large node)",
    )
    serve.add_argument(
        "--nfs",
        type=_export,
        action="append",
        default=[],
        help="map an NFS export to a local directory: SERVER:/EXPORT=LOCAL_DIR (repeatable)",
    )
    serve.add_argument(
        "--token", default=None, help="require this bearer token (kubectl sends tokens only over HTTPS: add --tls)"
    )
    serve.add_argument(
        "--tls",
        action="store_true",
        help="serve HTTPS with a self-signed certificate (its CA is named in the kubeconfig)",
    )
    serve.add_argument("--namespace", action="append", default=[], help="create this namespace (repeatable)")
    serve.add_argument(
        "--kueue",
        action="store_true",
        help="also run the simulated Kueue (objects labelled kueue.x-k8s.io/queue-name are queued)",
    )
    serve.add_argument(
        "--volume-mode",
        choices=["rewrite", "bind", "auto"],
        default="rewrite",
        help="map volumes by rewriting mount paths in commands and env (default), or bind-mount them "
        "in a private mount namespace per container (root only; 'auto': bind when possible)",
    )
    serve.add_argument(
        "--container-log-max-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="rotate container logs over this size, as the kubelet's containerLogMaxSize (default: never)",
    )
    serve.add_argument(
        "--missing-image",
        action="append",
        default=[],
        help="an image that never pulls (repeatable; names containing 'doesnotexist' never do)",
    )
    args = parser.parse_args(argv)
    for path in args.crd:
        if not path.is_file():
            parser.error(f"--crd {path}: no such file.")
    try:
        return asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 130


async def _serve(args: argparse.Namespace) -> int:
    try:
        cluster = FakeCluster(
            args.state_dir,
            crd_files=args.crd,
            builtin_crds=not args.no_builtin_crds,
            nodes=args.node or None,
            nfs_exports=dict(args.nfs),
            token=args.token,
            namespaces=args.namespace,
            host=args.host,
            port=args.port,
            missing_images=args.missing_image,
            tls=args.tls,
            volume_mode=args.volume_mode,
            container_log_max_size=args.container_log_max_size,
            controllers=[*CONTROLLERS, "kueue"] if args.kueue else CONTROLLERS,
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await cluster.start()
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"fake cluster serving at {cluster.url}; kubeconfig: {cluster.kubeconfig}", flush=True)
        await stop.wait()
    finally:
        await cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
