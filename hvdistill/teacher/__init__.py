"""Training an image teacher for the synthetic world (docs/teacher.md).

data.py lists and reads image / class-map pairs through the dataset sources; crops.py draws
training crops and held-out views; train.py trains the `model.image` backbone with a throwaway
per-pixel classifier, saves it as torchvision weights and scores it; cli.py is
`hvdistill teacher train CONFIG [key=value ...]`.
"""
