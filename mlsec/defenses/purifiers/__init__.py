"""GAN purifiers: the networks, the training-run state, Defense-GAN and APE-GAN."""
