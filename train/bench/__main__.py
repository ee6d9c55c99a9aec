import sys

from train.bench import main

sys.exit(main())
