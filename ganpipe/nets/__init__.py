"""The networks (DCGAN, SNGAN-style ResNet), sampling and checkpoints."""
