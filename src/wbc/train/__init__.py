"""Training, export and model definitions. Needs the ``train`` extra (torch, torchvision)."""
