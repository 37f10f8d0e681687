"""Models: the encoder classifier (and the translator), built from models.layers."""
