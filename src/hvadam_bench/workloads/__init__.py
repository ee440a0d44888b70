"""What the studies train and measure: the valley landscapes (and their batched runs), the
PTB LSTM, the vision models, and the GAN networks, problems and metrics."""
