"""The datasets of the suites, one reader each: PTB (``ptb``), CIFAR (``cifar``), and the
offline image sets (scikit-learn's digits, MNIST-1D) in ``vision``."""
