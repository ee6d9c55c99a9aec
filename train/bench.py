"""`python train/bench.py kernels|loader|step ...`: the benchmark commands of train/bench/ (see its docstring)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from train.bench import main  # noqa: E402  (the package train/bench/, not this file)

if __name__ == "__main__":
    sys.exit(main())
