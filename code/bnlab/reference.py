"""Numbers recorded elsewhere that the course compares its own runs against.

The numbers are not computed by the course; each says where it comes from. ``bnlab.stats.within_prediction_interval``
says whether one of them lies inside the spread of the course's own seeds.
"""

# The lecture course's published L11 code (STAT 453, Spring 2021, L11/code/batchnorm.ipynb), torch 1.9, on its GPU:
# 784-75-45-10, BatchNorm before ReLU, bias=False, SGD lr 0.1, batch 256, 50 epochs, seed 123. Accuracies after the
# last epoch.
LECTURE_REFERENCE = {
    "test_acc": 97.77,
    "train_acc": 100.00,
    "val_acc": 98.07,
    "minutes": 2.18,
    "epochs": 50,
}
# The same course, every Linear weight drawn from N(0, 0.001^2): L11/code/weight_normal.ipynb (no BatchNorm) and
# L11/code/weight_normal-batchnorm.ipynb (BatchNorm). Without BatchNorm the run sits on a plateau through epoch 17,
# at 10.50 % validation accuracy and 11.30 % to 11.33 % training accuracy (measured on the training loader, which
# drops the incomplete last batch: a random 53,760 of the 54,000 images each epoch), and leaves it in epoch 18
# (26.13 % validation). Training and validation accuracies are measured after each epoch, in eval mode.
LECTURE_BAD_INIT = {
    "no_bn_train_acc_after_9_epochs": 11.31,
    "no_bn_train_acc_on_plateau": (11.30, 11.33),
    "no_bn_val_acc_on_plateau": 10.50,
    "no_bn_first_epoch_off_plateau": 18,
    "no_bn_test_acc": 96.80,
    "bn_train_acc_after_1_epoch": 96.47,
    "bn_val_acc_after_1_epoch": 96.58,
    "bn_test_acc": 97.82,
}

# ducha-aiki/caffenet-benchmark, batchnorm.md (tables "BN -- before or after ReLU?" and "BN and dropout"): ImageNet-2012
# top-1 accuracy of CaffeNet-128 (CaffeNet with images resized to a short side of 128, fc6 and fc7 with 2048 units,
# LSUV initialisation), one run per variant, no spread reported. The page notes that its BatchNorm results are
# obtained without the scale-and-shift layer (y = kx + b) unless a row says "+ scale&bias layer": only those rows
# match PyTorch's BatchNorm with affine=True (its default, learnable gamma and beta).
CAFFENET_PLACEMENT = {"BN before ReLU": 0.478, "BN after ReLU": 0.493}  # with the scale-and-shift layer (affine=True)
CAFFENET_PLACEMENT_NO_AFFINE = {"BN before ReLU": 0.474, "BN after ReLU": 0.499}  # without it (affine=False)
# BatchNorm after ReLU, without the scale-and-shift layer; dropout in the fully connected layers fc6 and fc7.
CAFFENET_DROPOUT = {"BN + dropout 0.5": 0.499, "BN + dropout 0.2": 0.527, "BN + dropout 0": 0.513}
