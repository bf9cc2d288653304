"""Exercises for the chapter *BatchNorm in a CNN* (``ch06``): over how many values BatchNorm2d takes a channel's
mean, its train-mode forward pass written from tensor operations (PyTorch's normalisation functions switched off),
folding an eval-mode BatchNorm2d into the Conv2d before it, and fine-tuning with batches of two gone wrong."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checks import Layer, Problem, describe_value, folded_layer_problem, tensor_problem
from .core import Case, ChoiceExercise, ExerciseSet, FunctionExercise, ValueExercise
from .inputs import eval_batchnorm, image_batch, normal, randint, uniform
from .probe import FORBIDDABLE

AXES_HINT = ("BatchNorm2d keeps one mean and one variance per channel, over the batch and every position: "
             "dim=(0, 2, 3), so the statistics have shape (C,), like running_mean.")


class ValuesPerMean(ValueExercise):
    """How many numbers one channel's mean is taken over, for a Conv2d's output fed to BatchNorm2d in train mode."""

    def conv_output(self) -> torch.Tensor:
        p = self.params
        conv = nn.Conv2d(p["in_channels"], p["channels"], kernel_size=3, padding=1)
        with torch.no_grad():
            return conv(torch.zeros(p["batch"], p["in_channels"], p["size"], p["size"]))

    def expected(self):
        """From PyTorch itself: one 1 among zeros, and momentum 1, make channel 0's running mean 1 / (values)."""
        z = torch.zeros_like(self.conv_output(), dtype=torch.float64)
        z[0, 0, 0, 0] = 1.0
        bn = nn.BatchNorm2d(z.shape[1], momentum=1.0).double().train()
        with torch.no_grad():
            bn(z)
        return 1.0 / float(bn.running_mean[0])

    def mistakes(self):
        n, c, h, w = self.conv_output().shape
        return [
            ("averaged over N only", float(n),
             "That counts the images only. BatchNorm2d takes each channel's mean over the batch *and* every "
             "position: N x H x W values."),
            ("averaged over H and W only", float(h * w),
             "That counts one image's positions: a per-image, per-channel mean is InstanceNorm's. BatchNorm2d also "
             "averages over the batch: N x H x W values."),
            ("averaged over C, H and W", float(c * h * w),
             "That counts one image's channels and positions: a per-image mean is LayerNorm's. BatchNorm2d keeps "
             "one mean per channel, over the batch and every position: N x H x W values."),
            ("averaged over everything", float(n * c * h * w),
             "That counts the whole tensor. BatchNorm2d keeps one mean per channel: N x H x W values each."),
            ("number of means", float(c),
             "That is how many means there are, one per channel; the question asks how many values each one is "
             "taken over."),
            ("padding ignored", float(n * (h - 2) * (w - 2)),
             "With padding=1 a 3 x 3 convolution keeps the image's height and width."),
        ]

    def matches(self, got, want):
        return abs(got - want) < 0.5


def batchnorm2d_reference(x, gamma, beta, running_mean, running_var, momentum, eps) -> tuple:
    """``(y, new running_mean, new running_var)`` from PyTorch's nn.BatchNorm2d in train mode, in float64."""
    bn = nn.BatchNorm2d(x.shape[1], eps=eps, momentum=momentum).double().train()
    with torch.no_grad():
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
        bn.running_mean.copy_(running_mean)
        bn.running_var.copy_(running_var)
        y = bn(x.to(torch.float64))
    return y, bn.running_mean.clone(), bn.running_var.clone()


class BatchNorm2dTrain(FunctionExercise):
    """``batchnorm2d_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5)`` -> ``(y, new
    running_mean, new running_var)`` for a float32 x of shape (N, C, H, W), what nn.BatchNorm2d computes in train
    mode, the inputs left unchanged; PyTorch's normalisation functions are switched off while it runs."""

    forbidden = tuple(FORBIDDABLE)
    mistakes = {
        "averaged over N only": "Statistics over the batch axis only (dim=0): every position got its own mean, as if "
                                "every pixel were a feature. " + AXES_HINT,
        "averaged over H and W only": "Statistics per image and channel (dim=(2, 3)): that is InstanceNorm. "
                                      + AXES_HINT,
        "unbiased variance in the output": "You normalised with the unbiased variance (dividing by n - 1). In train "
                                           "mode BatchNorm normalises with the biased batch variance, dividing by "
                                           "n = N x H x W: unbiased=False.",
        "biased variance in running_var": "running_var stores the *unbiased* batch variance (dividing by "
                                          "n - 1, n = N x H x W), although the normalisation uses the biased one.",
        "variances swapped": "The two variances are swapped: normalise with the biased variance (divide by n), and "
                             "put the unbiased one (divide by n - 1) into running_var.",
        "eps left out": "eps is missing: BatchNorm divides by the square root of (variance + eps).",
        "eps outside the square root": "eps is outside the square root: BatchNorm divides by the square root of "
                                       "(variance + eps).",
        "eps argument ignored": "Your function ignores its eps argument: use the eps it is given.",
        "momentum on the wrong term": "Momentum is on the wrong term: the new running value is (1 - momentum) * "
                                      "old + momentum * batch statistic.",
        "momentum argument ignored": "Your function ignores its momentum argument: use the momentum it is given.",
        "running statistics not updated": "The running statistics are returned as they came in: in train mode "
                                          "BatchNorm2d also updates them with this batch's mean and variance.",
        "gamma and beta missing": "gamma and beta are missing: the output is gamma * x_hat + beta, per channel.",
    }
    hint_on_error = {
        "size of tensor": "Your statistics do not line up with the (C,) tensors. " + AXES_HINT + " Reshape "
                          "gamma and beta with .view(1, -1, 1, 1) to scale (N, C, H, W).",
    }

    def make_case(self, generator, index):
        x = image_batch(generator)
        c = x.shape[1]
        args = {"x": x, "gamma": 1 + 0.5 * normal(generator, c), "beta": normal(generator, c),
                "running_mean": normal(generator, c), "running_var": uniform(generator, 0.5, 2.0, c)}
        kwargs = {} if index == 0 else {"momentum": float(uniform(generator, 0.05, 0.3, 1)),
                                        "eps": float(uniform(generator, 0.05, 0.5, 1))}
        return Case(args, kwargs)

    @staticmethod
    def settings(case) -> tuple:
        return case.kwargs.get("momentum", 0.1), case.kwargs.get("eps", 1e-5)

    def expected(self, case):
        momentum, eps = self.settings(case)
        return batchnorm2d_reference(*(case.args[k] for k in ("x", "gamma", "beta", "running_mean", "running_var")),
                                     momentum, eps)

    def variants(self, case):
        x, gamma, beta, old_mean, old_var = (case.args[k].to(torch.float64) for k in
                                             ("x", "gamma", "beta", "running_mean", "running_var"))
        momentum, eps = self.settings(case)
        g, b = gamma.view(1, -1, 1, 1), beta.view(1, -1, 1, 1)
        dims = (0, 2, 3)
        mean = x.mean(dims)
        biased, unbiased = x.var(dims, unbiased=False), x.var(dims, unbiased=True)

        def output(var=biased, eps_=eps, over=dims, sqrt_eps_outside=False, affine=True):
            m = x.mean(over, keepdim=True)
            v = var.view(1, -1, 1, 1) if over == dims else x.var(over, unbiased=False, keepdim=True)
            x_hat = (x - m) / (torch.sqrt(v) + eps_ if sqrt_eps_outside else torch.sqrt(v + eps_))
            return g * x_hat + b if affine else x_hat

        def update(old, new, weight=momentum, swapped=False):
            return weight * old + (1 - weight) * new if swapped else (1 - weight) * old + weight * new

        running = (update(old_mean, mean), update(old_var, unbiased))
        return {
            "averaged over N only": (output(over=(0,)), None, None),
            "averaged over H and W only": (output(over=(2, 3)), None, None),
            "unbiased variance in the output": (output(var=unbiased), *running),
            "biased variance in running_var": (output(), running[0], update(old_var, biased)),
            "variances swapped": (output(var=unbiased), running[0], update(old_var, biased)),
            "eps left out": (output(eps_=0.0), *running),
            "eps outside the square root": (output(sqrt_eps_outside=True), *running),
            "eps argument ignored": (output(eps_=1e-5), *running),
            "momentum on the wrong term": (output(), update(old_mean, mean, swapped=True),
                                           update(old_var, unbiased, swapped=True)),
            "momentum argument ignored": (output(), update(old_mean, mean, 0.1), update(old_var, unbiased, 0.1)),
            "running statistics not updated": (output(), old_mean, old_var),
            "gamma and beta missing": (output(affine=False), *running),
        }

    def problem(self, case, got, want):
        """Each of the three results in turn; a result the reference leaves as None (a mistake whose running
        statistics cannot be compared) is not checked."""
        if not (isinstance(got, (tuple, list)) and len(got) == 3):
            return Problem(f"expected a tuple (y, running_mean, running_var), got {describe_value(got)}")
        for name, value, reference in zip(("output y", "new running_mean", "new running_var"), got, want):
            if reference is None:
                continue
            problem = tensor_problem(value, reference, what=f"the {name}")
            if problem is not None:
                return problem
        return None

    def describe(self, case):
        momentum, eps = self.settings(case)
        settings = "the default momentum and eps" if not case.kwargs else f"momentum={momentum:.3g}, eps={eps:.3g}"
        return f"a float32 x of shape {tuple(case.args['x'].shape)} and {settings}"


class FoldConvBatchNorm(FunctionExercise):
    """``fold_conv_bn(conv, bn)`` -> one new float32 nn.Conv2d equal to bn(conv(x)) with bn in eval mode."""

    n_cases = 5
    rtol, atol = 1e-4, 1e-4
    mistakes = {
        "eps left out": "eps is missing: the eval-mode BatchNorm divides by sigma, the square root of "
                        "(running_var + eps), not of running_var alone.",
        "eps outside the square root": "eps is outside the square root: sigma is the square root of "
                                       "(running_var + eps).",
        "variance instead of standard deviation": "You divided by the variance: divide by the standard deviation "
                                                  "sigma, the square root of (running_var + eps).",
        "Conv bias dropped": "The Conv layer's own bias b is missing: the folded bias is "
                             "gamma * (b - mu) / sigma + beta.",
        "no folded bias": "The folded Conv2d needs a bias even when conv has none (then b = 0): "
                          "gamma * (b - mu) / sigma + beta.",
        "beta dropped": "beta is missing from the folded bias: gamma * (b - mu) / sigma + beta.",
        "running mean not subtracted": "The running mean is missing: the folded bias is "
                                       "gamma * (b - mu) / sigma + beta.",
        "stride or padding lost": "The folded Conv2d must slide over the image as conv does: give it conv's "
                                  "kernel_size, stride and padding.",
    }
    hint_on_error = {
        **dict.fromkeys(("size of tensor", "broadcast shape"),
                        "gamma / sigma has one entry per *output* channel: it scales conv.weight, of shape "
                        "(out, in, kH, kW), along dim 0: conv.weight * (gamma / sigma).view(-1, 1, 1, 1)."),
        "NoneType": "Some Conv layers have no bias (conv.bias is None, after bias=False): then b = 0.",
    }

    def make_case(self, generator, index):
        c_in = randint(generator, 1, 3)
        c_out = c_in + randint(generator, 1, 3)  # differ, so that a scale along the wrong axis shows
        kernel = randint(generator, 1, 3)
        stride, padding = (2, 1) if index == 3 else (randint(generator, 1, 2), randint(generator, 0, 1))
        has_bias = index != 1 and (index == 0 or bool(randint(generator, 0, 1)))
        conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=has_bias)
        with torch.no_grad():
            conv.weight.copy_(normal(generator, *conv.weight.shape) * 0.7)
            if has_bias:
                conv.bias.copy_(normal(generator, c_out))
        eps = 1e-5 if index == 2 else float(uniform(generator, 0.05, 0.5, 1))
        bn = eval_batchnorm(generator, c_out, eps, nn.BatchNorm2d)
        return Case({"conv": conv.eval(), "bn": bn}, info={"x": normal(generator, 2, c_in, 6, 7)})

    @staticmethod
    def fold(case, *, sigma=None, b=None, beta=None, mean=None, no_bias=False):
        """The folded layer's output on the case's x, in float64, with any part replaced by a mistake's."""
        conv, bn = case.args["conv"], case.args["bn"]
        as64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
        zeros = torch.zeros(conv.out_channels, dtype=torch.float64)
        b = (as64(conv.bias) if conv.bias is not None else zeros) if b is None else b
        beta = as64(bn.bias) if beta is None else beta
        mean = as64(bn.running_mean) if mean is None else mean
        sigma = torch.sqrt(as64(bn.running_var) + bn.eps) if sigma is None else sigma
        gamma = as64(bn.weight)
        weight = as64(conv.weight) * (gamma / sigma).view(-1, 1, 1, 1)
        bias = None if no_bias else gamma * (b - mean) / sigma + beta
        return F.conv2d(as64(case.info["x"]), weight, bias, stride=conv.stride, padding=conv.padding)

    def expected(self, case):
        conv, bn = (case.inputs()[k].double() for k in ("conv", "bn"))
        with torch.no_grad():
            return bn(conv(case.info["x"].to(torch.float64)))

    def variants(self, case):
        var, eps = case.args["bn"].running_var.to(torch.float64), case.args["bn"].eps
        zeros = torch.zeros(case.args["conv"].out_channels, dtype=torch.float64)
        found = {
            "eps left out": self.fold(case, sigma=torch.sqrt(var)),
            "eps outside the square root": self.fold(case, sigma=torch.sqrt(var) + eps),
            "variance instead of standard deviation": self.fold(case, sigma=var + eps),
            "no folded bias": self.fold(case, no_bias=True),
            "beta dropped": self.fold(case, beta=zeros),
            "running mean not subtracted": self.fold(case, mean=zeros),
        }
        if case.args["conv"].bias is not None:
            found["Conv bias dropped"] = self.fold(case, b=zeros)
        return found

    def problem(self, case, got, want):
        conv = case.args["conv"]
        if isinstance(got, Layer) and got.kind == "Conv2d" and not got.custom:
            init = got.spec["init"]
            if (init["stride"], init["padding"]) != (list(conv.stride), list(conv.padding)):
                return Problem(f"expected stride={list(conv.stride)} and padding={list(conv.padding)}, like "
                               f"conv's; got stride={init['stride']} and padding={init['padding']}",
                               "stride or padding lost")
        shape = {"in_channels": conv.in_channels, "out_channels": conv.out_channels,
                 "kernel_size": list(conv.kernel_size), "groups": 1}
        return folded_layer_problem(got, "Conv2d", shape, case.info["x"], want, rtol=self.rtol, atol=self.atol)

    def describe(self, case):
        conv, bn = case.args["conv"], case.args["bn"]
        bias = "with a bias" if conv.bias is not None else "without a bias (bias=False)"
        return (f"Conv2d({conv.in_channels}, {conv.out_channels}, kernel_size={conv.kernel_size[0]}, "
                f"stride={conv.stride[0]}, padding={conv.padding[0]}) {bias} and "
                f"BatchNorm2d({conv.out_channels}, eps={bn.eps:.3g})")


EXERCISES = ExerciseSet("ch06", "BatchNorm in a CNN", [
    ValuesPerMean(
        "ch06.q1", "values behind one channel's mean", "answer_q1", points=2,
        params={"batch": 8, "in_channels": 3, "channels": 16, "size": 12},
        hint="""
Work out the shape of the Conv2d's output first, (N, C, H, W): padding=1 keeps a 3 x 3 convolution's height and
width. BatchNorm2d keeps one mean per channel. Which of the four axes does it average over?""",
        solution='''
conv = nn.Conv2d(3, 16, kernel_size=3, padding=1)
out = conv(torch.zeros(8, 3, 12, 12))                      # shape (8, 16, 12, 12)
n, c, h, w = out.shape
answer_q1 = n * h * w                                      # 8 * 12 * 12 = 1,152 values per channel'''),
    BatchNorm2dTrain(
        "ch06.q2", "the BatchNorm2d train-mode forward, from scratch", "batchnorm2d_train", points=3,
        hint="""
Per channel, over the batch and both spatial axes: x.mean(dim=(0, 2, 3)). Normalise with the biased variance
(unbiased=False), with eps inside the square root, then scale and shift per channel with gamma.view(1, -1, 1, 1)
and beta.view(1, -1, 1, 1). The running statistics move towards the batch's by momentum, and running_var takes
the unbiased variance. Compare with nn.BatchNorm2d(C, eps=eps, momentum=momentum) in train mode, its weight,
bias and buffers set to yours. Return new tensors; leave the inputs as they were.""",
        solution='''
def batchnorm2d_train(x, gamma, beta, running_mean, running_var, momentum=0.1, eps=1e-5):
    mean = x.mean(dim=(0, 2, 3))                               # one per channel, over N, H and W
    var = x.var(dim=(0, 2, 3), unbiased=False)                 # biased: divide by N * H * W
    x_hat = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
    y = gamma.view(1, -1, 1, 1) * x_hat + beta.view(1, -1, 1, 1)
    unbiased = x.var(dim=(0, 2, 3), unbiased=True)             # running_var stores the unbiased one
    new_mean = (1 - momentum) * running_mean + momentum * mean
    new_var = (1 - momentum) * running_var + momentum * unbiased
    return y, new_mean, new_var'''),
    FoldConvBatchNorm(
        "ch06.q3", "fold BatchNorm2d into the Conv2d before it", "fold_conv_bn", points=3,
        hint="""
In eval mode BatchNorm2d is a fixed scale and shift per channel: bn(z) = gamma * (z - mu) / sigma + beta, with
sigma the square root of running_var + eps, for every position of channel c. A Conv2d computes each output
channel with its own filter conv.weight[c] and bias b[c]. So scale each output channel's filter, and fold the
rest into the bias. Give the new Conv2d conv's kernel_size, stride and padding. If conv.bias is None, b = 0.
torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn) lets you compare.""",
        solution='''
def fold_conv_bn(conv, bn):
    sigma = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / sigma                                  # one factor per output channel
    b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding, bias=True)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((b - bn.running_mean) * scale + bn.bias)
    return fused'''),
    ChoiceExercise(
        "ch06.q4", "fine-tuning with batches of two", "answer_q4", points=2,
        options={
            "A": "With two images per batch, each batch's channel means and variances are noisy, and the network "
                 "learned to work with these noisy statistics, not with the running statistics that eval mode uses.",
            "B": "The running statistics, updated with momentum 0.1, hold mostly the last few batches' noisy "
                 "estimates, so eval mode normalises with numbers unlike those any batch was trained with.",
            "C": "After fine-tuning, re-estimate the running statistics over many training images: reset them "
                 "(bn.reset_running_stats()), set bn.momentum = None, and run large batches through the model in "
                 "train mode under torch.no_grad().",
            "D": "Raise BatchNorm's momentum to 0.9, so that the running statistics follow the batches faster.",
            "E": "Turn the Conv layers' biases back on: with so few images, BatchNorm's mean subtraction no longer "
                 "removes them.",
            "F": "Accumulate the gradients of 16 batches of 2 before each optimiser step: BatchNorm then normalises "
                 "with the statistics of 32 images.",
            "G": "Freeze the BatchNorm layers in eval mode whenever the batches are small: that is always at least as "
                 "accurate as fine-tuning them in train mode.",
        },
        correct="ABC",
        why={
            "A": "Two images give few independent values per channel, and one image's values are correlated: the "
                 "batch statistics vary from batch to batch, and the weights adapt to that.",
            "B": "An exponential average with momentum 0.1 weighs the last ten or so batches most; with batches of "
                 "two, that is a noisy estimate, and it is not what training normalised with.",
            "C": "With momentum None, BatchNorm keeps the plain average of the batch statistics it sees, so many "
                 "large batches give a steady estimate, while no_grad and no optimiser step leave the weights alone: "
                 "chapter 4's precise BatchNorm.",
            "D": "A larger momentum makes the running statistics follow the last one or two noisy batches even more "
                 "closely: noisier, not better.",
            "E": "Any batch, two images included, has its own mean, and BatchNorm subtracts it: a Conv bias right "
                 "before BatchNorm stays redundant at every batch size.",
            "F": "BatchNorm normalises each forward pass's batch on its own: accumulating gradients over 16 passes "
                 "changes the optimiser's step, not the statistics, which still come from 2 images.",
            "G": "Not always: a frozen BatchNorm keeps normalising with the pretrained statistics, which may not fit "
                 "the new data, and the chapter's fine-tuning experiment compares both ways. Freezing is a choice to "
                 "test.",
        },
        hint="""
Compare what a BatchNorm layer normalises with in train mode and in eval mode, and how good each of those
estimates is with two images per batch. Which change makes eval mode's estimates good without retraining?"""),
])
