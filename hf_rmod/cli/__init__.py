"""The ``hf-rmod`` command line: ``demo``, ``sample``, ``train-value``, ``value-report``, ``evaluate``,
``summarize``, ``distill``, ``train-objective-policies``.

``python -m hf_rmod <command>`` is the same program.

Every subcommand is built from the settings dataclasses of :mod:`hf_rmod.experiments.configs` with
:class:`transformers.HfArgumentParser` (as TRL does), so each default is written once and ``--help`` shows it;
the parsed dataclasses are what the Python functions take (``sample_responses(..., config=SamplingConfig)``).

Startup: this module imports only the standard library and the torch-free configs at module level; torch,
transformers and the pipelines load inside the command that needs them, so ``--help`` answers in well under a
second. ``HfArgumentParser`` is loaded from its own file (``transformers/hf_argparser.py`` imports only the
standard library and ``yaml``) instead of through the ``transformers`` package ``__init__`` (~0.9 s); if that
file cannot be loaded on its own, the normal ``from transformers import HfArgumentParser`` is used.

Errors: a mistake of the user (see :data:`USER_ERRORS` and ``docs/troubleshooting.md``) is one line on stderr,
``hf-rmod <command>: error: ...``, exit code 2; ``--debug`` (or ``HF_RMOD_DEBUG=1``) shows the traceback
instead. Ctrl-C prints where the run stopped and whether rerunning resumes it, exit code 130.

Layout: every subcommand is a (dataclasses, runner) pair registered in :data:`COMMANDS` (``_parser``, with the
parser building and the flag-name mapping of errors); the runners live by subcommand group (``_decode``: demo,
sample; ``_values``: train-value, value-report; ``_evaluate``: evaluate, summarize; ``_policies``: distill,
train-objective-policies) over the shared loaders of ``_common``; this module holds the entry point and the
error / Ctrl-C handling. Each runner only loads what it needs (lazily) and calls one pipeline function.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from typing import Iterator, Sequence

from ._common import UsageError  # noqa: F401 - re-exported
from ._evaluate import select_methods  # noqa: F401 - re-exported
from ._parser import (  # noqa: F401
    _DEBUG_ENV,
    COMMANDS,
    PROG,
    _one_line,
    _to_dataclasses,
    build_parser,
    name_flags,
)

__all__ = ["USER_ERRORS", "build_parser", "main"]

#: Exceptions reported as one line (exit 2) instead of a traceback: bad values (``ValueError``, including
#: ``json.JSONDecodeError``; ``TypeError`` from argument validation), missing or unreadable files and model
#: folders (``OSError``: ``FileNotFoundError``, ``PermissionError``, the Hub's "not a valid model identifier"),
#: a missing optional dependency (``ImportError``, whose message has the install command) and
#: ``argparse.ArgumentTypeError``. Anything else is a bug: full traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, TypeError, OSError, ImportError, argparse.ArgumentTypeError,
)


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------
def _message(err: BaseException) -> str:
    text = _one_line(str(err)) or type(err).__name__
    if isinstance(err, (ImportError, OSError)) and not isinstance(err, FileNotFoundError):
        return f"{type(err).__name__}: {text}"
    return text


@contextlib.contextmanager
def _warnings_as_lines(prog: str, debug: bool) -> Iterator[None]:
    """Our ``UserWarning`` s (e.g. a head worse than the constant predictor) as ``prog: warning: ...`` lines."""
    if debug:
        yield
        return
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category is not UserWarning:  # DeprecationWarning & co. from libraries: unchanged
            return previous(message, category, filename, lineno, file, line)
        print(f"{prog}: warning: {_one_line(str(message))}", file=sys.stderr if file is None else file)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-rmod`` console script; returns the exit code.

    ``--help`` / ``--version`` / usage errors raise ``SystemExit`` (0 / 0 / 2) as argparse does.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    namespace = parser.parse_args(argv)
    debug = bool(namespace.debug) or os.environ.get(_DEBUG_ENV, "") not in ("", "0")
    command = COMMANDS[namespace._command]
    sub_parser = namespace._parser
    configs = _to_dataclasses(namespace)
    try:
        with _warnings_as_lines(sub_parser.prog, debug):
            return int(command.run(*configs) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        where = command.on_interrupt.format(**{k: v for c in configs for k, v in vars(c).items()})
        print(f"\n{sub_parser.prog}: interrupted (Ctrl-C); {where}", file=sys.stderr)
        return 130
    except UsageError as err:
        if debug:
            raise
        sub_parser.error(str(err))
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"{sub_parser.prog}: error: {_message(err)}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError: the one RuntimeError users cause
        if type(err).__name__ != "OutOfMemoryError" or debug:
            raise
        print(f"{sub_parser.prog}: error: out of device memory ({_one_line(str(err))[:200]}); lower --batch-size "
              "(or --num-responses / --k), or run with --device cpu.", file=sys.stderr)
        return 2
    return 2  # pragma: no cover - sub_parser.error exits


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
