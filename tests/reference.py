"""An independent NumPy BiT forward pass, written from the architecture facts
(not from bit_keras), and helpers that write checkpoints in the official layout."""

import numpy as np

UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def conv2d(x, w, stride=1):
    """'valid' NHWC x HWIO convolution."""
    kh, kw, cin, cout = w.shape
    n, h, wd, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, oh, ow, cout), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride, :]
            out += patch @ w[i, j]
    return out


def standardize(w, eps=1e-10):
    w = w.astype(np.float64)
    mean = w.mean(axis=(0, 1, 2), keepdims=True)
    var = w.var(axis=(0, 1, 2), keepdims=True)
    return (w - mean) / np.sqrt(var + eps)


def group_norm(x, gamma, beta, groups=32, eps=1e-5):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups).astype(np.float64)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(n, h, w, c) * gamma + beta


def pad(x, p):
    return np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


def max_pool_3x3_s2(x):
    n, h, w, c = x.shape
    oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    out = np.full((n, oh, ow, c), -np.inf)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, x[:, i : i + 2 * (oh - 1) + 1 : 2, j : j + 2 * (ow - 1) + 1 : 2, :])
    return out


def relu(x):
    return np.maximum(x, 0)


def forward(state, images, units, ws_eps=1e-10, gn_eps=1e-5):
    """Logits of a BiT model given its official-layout weights and [-1, 1] images.

    `ws_eps` and `gn_eps` are BiT's epsilons; tests pass others to show that they matter.
    """
    ws = lambda w: standardize(w, ws_eps)
    gn = lambda x, gamma, beta: group_norm(x, gamma, beta, eps=gn_eps)
    s = {k: v.astype(np.float64) for k, v in state.items()}
    x = conv2d(pad(images.astype(np.float64), 3), ws(s["resnet/root_block/standardized_conv2d/kernel"]), 2)
    x = max_pool_3x3_s2(pad(x, 1))
    for b, n in enumerate(units, start=1):
        for u in range(1, n + 1):
            p = f"resnet/block{b}/unit{u:02d}/"
            stride = 2 if b > 1 and u == 1 else 1
            preact = relu(gn(x, s[p + "a/group_norm/gamma"], s[p + "a/group_norm/beta"]))
            proj = p + "a/proj/standardized_conv2d/kernel"
            shortcut = conv2d(preact, ws(s[proj]), stride) if proj in s else x
            y = conv2d(preact, ws(s[p + "a/standardized_conv2d/kernel"]))
            y = relu(gn(y, s[p + "b/group_norm/gamma"], s[p + "b/group_norm/beta"]))
            y = conv2d(pad(y, 1), ws(s[p + "b/standardized_conv2d/kernel"]), stride)
            y = relu(gn(y, s[p + "c/group_norm/gamma"], s[p + "c/group_norm/beta"]))
            y = conv2d(y, ws(s[p + "c/standardized_conv2d/kernel"]))
            x = y + shortcut
    x = relu(gn(x, s["resnet/group_norm/gamma"], s["resnet/group_norm/beta"]))
    pooled = x.mean(axis=(1, 2))
    return pooled @ s["resnet/head/conv2d/kernel"][0, 0] + s["resnet/head/conv2d/bias"]


def layout(units, width, num_classes):
    """Shapes of every tensor of the official checkpoint layout."""
    shapes = {"resnet/root_block/standardized_conv2d/kernel": (7, 7, 3, 64 * width)}
    cin = 64 * width
    for b, n in enumerate(units, start=1):
        cmid = 64 * width * 2 ** (b - 1)
        cout = 4 * cmid
        for u in range(1, n + 1):
            p = f"resnet/block{b}/unit{u:02d}/"
            shapes[p + "a/group_norm/gamma"] = shapes[p + "a/group_norm/beta"] = (cin,)
            shapes[p + "a/standardized_conv2d/kernel"] = (1, 1, cin, cmid)
            if u == 1:
                shapes[p + "a/proj/standardized_conv2d/kernel"] = (1, 1, cin, cout)
            for part in "bc":
                shapes[p + f"{part}/group_norm/gamma"] = shapes[p + f"{part}/group_norm/beta"] = (cmid,)
            shapes[p + "b/standardized_conv2d/kernel"] = (3, 3, cmid, cmid)
            shapes[p + "c/standardized_conv2d/kernel"] = (1, 1, cmid, cout)
            cin = cout
    shapes["resnet/group_norm/gamma"] = shapes["resnet/group_norm/beta"] = (cin,)
    shapes["resnet/head/conv2d/kernel"] = (1, 1, cin, num_classes)
    shapes["resnet/head/conv2d/bias"] = (num_classes,)
    return shapes


def random_state(units, width, num_classes, seed=0):
    """Realistic random weights: He-scaled kernels, gammas near 1, small betas."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in layout(units, width, num_classes).items():
        if key.endswith("gamma"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif key.endswith(("beta", "bias")):
            value = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[:-1]))
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in) + 0.01 * rng.standard_normal()
        state[key] = value.astype(np.float32)
    return state
