"""`python -m engine.data`: prepare DAVIS ahead of an evaluation (the code is engine.evaluation.data)."""

import sys

from engine.evaluation.data import main

if __name__ == "__main__":
    sys.exit(main())
