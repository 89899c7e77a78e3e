"""Training an image teacher for the synthetic world (docs/teacher.md).

data.py lists and reads image / side-output pairs through the dataset sources; crops.py draws
training crops and held-out views; backbone.py builds the `model.image` backbone (a ResNet or a
ViT), saves it (torchvision or DINOv2-release weights) and reads it back as pretraining does;
train.py trains it with a throwaway per-pixel head and scores it; cli.py is
`hvdistill teacher train CONFIG [key=value ...]`.
"""
