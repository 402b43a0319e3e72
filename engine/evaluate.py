"""`python -m engine.evaluate`: the paper's tables on a data set (the harness is engine.evaluation.evaluate)."""

import sys

from engine.evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
