"""Commands that drive runs built by train/run.py: `python -m train.commands.bench`, `.reproduce`, `.gpu_check`,
`.report`, `.convert_checkpoint`. Nothing in the loop imports from here."""
