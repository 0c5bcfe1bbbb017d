"""Entry point run by torchrun in every PyTorchJob pod (or as one plain process).

Exit codes: 0 done (or checkpointed after SIGTERM), 2 bad recipe or bad data (retrying cannot help), 3 persistent
NaN/Inf, 1 any other runtime failure.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from finetune_contract import names

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_NONFINITE = 0, 1, 2, 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=names.TRAINER_MODULE, description=__doc__)
    parser.add_argument("--recipe", type=Path, help="recipe JSON file (default: the FINETUNE_RECIPE env var)")
    return parser.parse_args(argv)


def fail(code: int, message: str) -> int:
    print(f"finetune-trainer: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from finetune_trainer.config import parse_recipe, recipe_from_env
    from finetune_trainer.data import DataError

    try:
        recipe = parse_recipe(args.recipe.read_text()) if args.recipe else recipe_from_env()
    except ValidationError as error:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors(include_url=False))
        return fail(EXIT_BAD_INPUT, f"invalid recipe: {details}")
    except (OSError, ValueError) as error:
        return fail(EXIT_BAD_INPUT, f"cannot read the recipe: {error}")

    from finetune_trainer.trainer import NonFiniteError, RunOptions, Trainer

    trainer = Trainer(recipe, RunOptions.from_env(recipe))
    clean = False
    try:
        trainer.setup()
        result = trainer.train()
        clean = True
    except DataError as error:
        return fail(EXIT_BAD_INPUT, f"bad data: {error}")
    except NonFiniteError as error:
        return fail(EXIT_NONFINITE, str(error))
    except Exception as error:  # the one place that turns any failure into an exit code
        traceback.print_exc()
        return fail(EXIT_FAILED, f"{type(error).__name__}: {error}")
    finally:
        trainer.close(synchronize=clean)
    state = "interrupted, checkpoint saved" if result.interrupted else f"done, model in {result.final_path}"
    print(f"finetune-trainer: {state} after {result.steps} steps", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
