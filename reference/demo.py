"""Train the NumPy dual-encoder oracle with the exact (full) softmax on a small synthetic dataset.

A hierarchical-cluster retrieval dataset (reference.data.make_dataset) is
generated, a two-tower MLP (reference.encoder.DualEncoder) is trained with the
full-softmax loss over all N targets and Adam, and test recall@1 / recall@10
(exact, over all N targets) are printed as training goes. Recall@k of a model
that ranks at random is k/N ("chance"); the final line states it next to the
achieved recall (the query noise caps recall@1 well below 1; the README
gives a measured run). On a busy machine, start Python with
OPENBLAS_NUM_THREADS=1: these matrices are too small to gain from BLAS
threads, and oversubscribed cores can make threaded BLAS several times slower.

Checkpoints and resuming: with ``--checkpoint PATH`` the run saves, every
``--checkpoint-every`` C steps, its parameters, the Adam moments and step, the
state of every generator (data, initialisation, batches), the step, the
target-row counter, the training losses since the last progress line and the
evaluation history (:func:`reference.persist.save_checkpoint`: atomic and
checksummed). ``--resume`` continues from that file if it exists; a run killed
(even by SIGKILL) and resumed prints the same progress lines after the resume
point and the same final line (elapsed times aside) as an uninterrupted run,
and ``--out`` writes the same JSON (final metrics, evaluation history, SHA-256
of the final parameters) bitwise. A damaged checkpoint, or one written with
other options, is an error naming the file (exit status 2); nothing is
overwritten.

Example:
    python -m reference demo --targets 2000 --steps 400
    python -m reference demo --checkpoint demo.ckpt.npz --checkpoint-every 50 --resume --out demo.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from reference import persist
from reference._validation import check_int, check_output_file, check_positive
from reference.data import make_dataset
from reference.encoder import ACTIVATIONS, DTYPES, DualEncoder, EncoderConfig, params_sha256
from reference.jsonio import write_json
from reference.metrics import evaluate
from reference.optim import Adam

__all__ = ["add_arguments", "params_sha256", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of the ``demo`` command on ``parser``."""
    d = parser.add_argument_group("data")
    d.add_argument("--targets", type=int, default=2000, help="number of targets N (default: %(default)s)")
    d.add_argument("--dim", type=int, default=32, help="feature dimension of targets and queries (default: %(default)s)")
    d.add_argument(
        "--queries-per-target", type=int, default=3,
        help="queries generated per target before the train/test split (default: %(default)s)",
    )  # fmt: skip
    d.add_argument(
        "--noise", type=float, default=0.2,
        help="query noise relative to the clean queries' scale; caps the achievable recall (default: %(default)s)",
    )  # fmt: skip
    m = parser.add_argument_group("model")
    m.add_argument(
        "--hidden", type=int, nargs="*", default=[64], metavar="W",
        help="hidden widths of each tower, e.g. --hidden 64 64; none for a linear tower (default: 64)",
    )  # fmt: skip
    m.add_argument("--out-dim", type=int, default=32, help="embedding dimension d (default: %(default)s)")
    m.add_argument("--activation", choices=ACTIVATIONS, default="tanh", help="hidden activation (default: %(default)s)")
    m.add_argument(
        "--no-normalize", dest="normalize", action="store_false",
        help="do not L2-normalise the tower outputs (default: normalise)",
    )  # fmt: skip
    m.add_argument("--beta", type=float, default=20.0, help="softmax temperature beta in a = beta <f, g> (default: %(default)s)")
    m.add_argument("--dtype", choices=DTYPES, default="float64", help="parameter and data dtype (default: %(default)s)")
    t = parser.add_argument_group("training")
    t.add_argument("--steps", type=int, default=400, help="Adam steps (default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=128, help="training queries per step (default: %(default)s)")
    t.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: %(default)s)")
    t.add_argument(
        "--eval-every", type=int, default=50,
        help="print a progress line every this many steps (default: %(default)s)",
    )  # fmt: skip
    t.add_argument("--seed", type=int, default=0, help="seed for data, initialisation and batches (default: %(default)s)")
    t.add_argument("--quiet", action="store_true", help="print only the final summary line")
    r = parser.add_argument_group("checkpoints and output")
    r.add_argument(
        "--checkpoint", type=Path, default=None, metavar="PATH",
        help="checkpoint file, written atomically every --checkpoint-every steps (default: none)",
    )  # fmt: skip
    r.add_argument(
        "--checkpoint-every", type=int, default=50, metavar="C",
        help="steps between checkpoints when --checkpoint is given (0: never; default: %(default)s)",
    )  # fmt: skip
    r.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists (needs --checkpoint)")
    r.add_argument(
        "--out", type=Path, default=None, metavar="PATH",
        help="write a JSON with the final metrics, the evaluation history and the SHA-256 of the final parameters",
    )  # fmt: skip


def _validate(args: argparse.Namespace) -> None:
    """Check every option before any work is done (ValueError names the option)."""
    check_int(args.targets, "--targets", low=2)
    check_int(args.dim, "--dim", low=1)
    check_int(args.queries_per_target, "--queries-per-target", low=1)
    if not np.isfinite(args.noise) or args.noise < 0:
        raise ValueError(f"--noise: expected a finite number >= 0, got {args.noise!r}")
    for w in args.hidden:
        check_int(w, "--hidden", low=1)
    check_int(args.out_dim, "--out-dim", low=1)
    check_positive(args.beta, "--beta")
    check_int(args.steps, "--steps", low=1)
    check_int(args.batch_size, "--batch-size", low=1)
    check_positive(args.lr, "--lr")
    check_int(args.eval_every, "--eval-every", low=1)
    check_int(args.seed, "--seed", low=0)
    check_int(args.checkpoint_every, "--checkpoint-every", low=0)
    if args.resume and args.checkpoint is None:
        raise ValueError("--resume: expected --checkpoint PATH to resume from, got none")
    if args.checkpoint is not None:
        check_output_file(args.checkpoint, "--checkpoint")
    if args.out is not None:
        check_output_file(args.out, "--out")


def _check_resumed(step: Any, args: argparse.Namespace, opt: Adam, extra: dict[str, Any]) -> None:
    """Refuse (``ValueError``) a checkpoint whose step disagrees with its history, optimiser or the options.

    ``step`` completed steps, 0 <= step < ``--steps``; Adam's step count
    equal to it; one progress row at step 0 and at every multiple of
    ``--eval-every`` up to it, finite apart from row 0's training loss; the
    training losses since the last row (``step mod --eval-every`` of them),
    finite; the target-row counter a non-negative integer.
    """
    if type(step) is not int or not 0 <= step < args.steps:
        raise ValueError(f"step: expected a completed step in [0, {args.steps}) (--steps), got {step!r}")
    if opt.t != step:
        raise ValueError(f"optimizer: expected {step} Adam steps (the checkpoint's step), got {opt.t}")
    history, losses, rows = extra["history"], extra["losses"], extra["target_rows_encoded"]
    want = [0, *range(args.eval_every, step + 1, args.eval_every)]
    ok_rows = isinstance(history, list) and all(isinstance(r, list) and len(r) == 5 for r in history)
    if not ok_rows or [r[0] for r in history] != [float(w) for w in want]:
        raise ValueError(f"history: expected progress rows at steps {want[:8]}{'...' if len(want) > 8 else ''}, "
                         f"got {len(history) if isinstance(history, list) else type(history).__name__} rows")
    values = [v for r in history for v in r][2:] + list(losses)
    if not all(isinstance(v, float) and np.isfinite(v) for v in values) or len(losses) != step % args.eval_every:
        raise ValueError(f"history: expected finite values and {step % args.eval_every} training losses since the "
                         f"last progress row, got {len(losses)}")
    if type(rows) is not int or rows < 0:
        raise ValueError(f"target_rows_encoded: expected an integer >= 0, got {rows!r}")


# Options that change the run's numbers: a checkpoint is only resumed under the same ones.
_RESULT_OPTIONS = ("targets", "dim", "queries_per_target", "noise", "hidden", "out_dim", "activation",
                   "normalize", "beta", "dtype", "steps", "batch_size", "lr", "eval_every", "seed")  # fmt: skip


def _run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options that determine the result, as JSON-safe values (stored in checkpoints and --out)."""
    out = {}
    for name in _RESULT_OPTIONS:
        value = getattr(args, name)
        out[name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def run(args: argparse.Namespace) -> int:
    """Run the demo: generate data, train with full softmax, print progress and a summary.

    Returns
    -------
    int
        Exit status 0.
    """
    _validate(args)
    start = time.perf_counter()
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    # Independent streams for data, initialisation and batch sampling.
    data_rng, init_rng, batch_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(args.seed).spawn(3))
    data = make_dataset(
        args.targets,
        dim=args.dim,
        queries_per_target=args.queries_per_target,
        noise=args.noise,
        rng=data_rng,
        dtype=np.dtype(args.dtype),
    )
    config = EncoderConfig(
        query_dim=data.train_x.shape[1],
        target_dim=data.targets.shape[1],
        hidden=tuple(args.hidden),
        out_dim=args.out_dim,
        activation=args.activation,
        normalize=args.normalize,
        beta=args.beta,
        dtype=args.dtype,
    )
    model = DualEncoder(config, seed=init_rng)
    opt = Adam(model.params, lr=args.lr)
    rngs = {"data": data_rng, "init": init_rng, "batch": batch_rng}
    run_config = _run_config(args)
    # history: one [step, train loss (nan at step 0), test loss, recall@1, recall@10] per progress line.
    history: list[list[float]] = []
    losses: list[float] = []
    first = 1
    path: Path | None = args.checkpoint
    if args.resume and path is not None and path.exists():
        ckpt = persist.load_checkpoint(path)  # PersistError (a ValueError) names the file
        extra = ckpt["extra"]
        if ckpt["meta"].get("config") != run_config or not isinstance(extra, dict):
            raise ValueError(
                f"{path}: checkpoint of a demo with options {ckpt['meta'].get('config')}, "
                f"expected {run_config} (delete it or drop --resume)"
            )
        try:  # validated by each setter before it changes anything
            model.set_params(ckpt["params"])
            opt.load_state_dict(ckpt["optimizer"])
            _check_resumed(ckpt["step"], args, opt, extra)
            for name, g in rngs.items():
                persist.restore_rng(g, persist.rng_to_array(ckpt["rngs"][name]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: checkpoint does not fit this demo ({type(exc).__name__}: {exc})") from None
        model.target_rows_encoded = int(extra["target_rows_encoded"])
        history, losses = list(extra["history"]), list(extra["losses"])  # as saved (exact, same types)
        first = int(ckpt["step"]) + 1
    N = data.targets.shape[0]
    n_train = data.train_x.shape[0]
    widths = "-".join(map(str, config.widths("query")))
    say(
        f"demo: N={N} targets, {n_train} train / {data.test_x.shape[0]} test queries, dim {args.dim}; "
        f"towers {widths} {config.activation}{' + L2 norm' if config.normalize else ''}, beta={config.beta:g}, "
        f"{config.dtype}; full softmax, Adam lr={args.lr:g}, batch {args.batch_size}, {args.steps} steps"
    )
    if first > 1:
        say(f"demo: resumed from {path} at step {first - 1}")

    def progress(step: int, train_loss: float | None) -> dict[str, float]:
        ev = evaluate(model, data.test_x, data.test_pos, data.targets, ks=(1, 10))
        shown = "      -" if train_loss is None else f"{train_loss:7.4f}"
        say(
            f"step {step:6d}  train loss {shown}  test loss {ev['loss']:7.4f}  "
            f"test recall@1 {ev['recall@1']:.4f}  recall@10 {ev['recall@10']:.4f}  "
            f"elapsed {time.perf_counter() - start:6.1f}s"
        )
        history.append([float(step), np.nan if train_loss is None else train_loss,
                        float(ev["loss"]), float(ev["recall@1"]), float(ev["recall@10"])])
        return ev

    def save(step: int) -> None:
        persist.save_checkpoint(
            path, step=step, params=model.params, optimizer=opt.state_dict(), rngs=rngs,
            extra={"target_rows_encoded": int(model.target_rows_encoded), "history": history, "losses": losses},
            meta={"command": "demo", "config": run_config},
        )  # fmt: skip

    if first == 1:
        progress(0, None)
    for step in range(first, args.steps + 1):
        batch = batch_rng.integers(0, n_train, args.batch_size)  # uniform, with replacement
        loss, grads = model.full_softmax_loss(data.train_x[batch], data.train_pos[batch], data.targets)
        opt.step(grads)
        losses.append(loss)
        if step % args.eval_every == 0 or step == args.steps:
            progress(step, float(np.mean(losses)))  # mean training loss since the last line
            losses = []
        if path is not None and args.checkpoint_every and step % args.checkpoint_every == 0 and step < args.steps:
            save(step)
    ev = {"loss": history[-1][2], "recall@1": history[-1][3], "recall@10": history[-1][4]}
    r1, r10 = ev["recall@1"], ev["recall@10"]
    print(
        f"final: test recall@1 {r1:.4f} (chance 1/N = {1 / N:.4g}, {r1 * N:.0f}x chance)  "
        f"recall@10 {r10:.4f} (chance 10/N = {min(1.0, 10 / N):.4g})  "
        f"test loss {ev['loss']:.4f} (uniform log N = {np.log(N):.4f})  "
        f"target rows encoded {model.target_rows_encoded}  elapsed {time.perf_counter() - start:.1f}s",
        flush=True,
    )
    if args.out is not None:
        result = {
            "config": run_config,
            "final": {"test_loss": ev["loss"], "recall@1": r1, "recall@10": r10,
                      "target_rows_encoded": int(model.target_rows_encoded)},
            "history": {"columns": ["step", "train_loss", "test_loss", "recall@1", "recall@10"],
                        "rows": [[None if np.isnan(v) else v for v in row] for row in history]},
            "params_sha256": params_sha256(model.params),
        }  # fmt: skip
        write_json(args.out, result)
    return 0
