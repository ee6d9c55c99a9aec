import sys

from train.commands.bench import main

sys.exit(main())
