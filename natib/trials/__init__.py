"""Ready-made trial programs (``python -m natib.trials.<name>``) and the helpers they share.

The programs need PyTorch (``pip install 'natib[nas]'``); importing this package does not import it.
``data`` loads a data set (scikit-learn's digits by default), ``common`` holds the device choice, the
``name=value`` metric printer, seeding and small training loops, and ``models`` the networks the recipes tune.
"""
