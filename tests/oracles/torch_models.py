"""Reference networks built from torch.nn primitives (torchvision does not install beside
torch 2.13 here), with torchvision's module names so state_dict keys line up."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.resnet.ResNet: resnet18 is (BasicBlock, [2, 2, 2, 2]),
    resnet50 (Bottleneck, [3, 4, 6, 3])."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000, block=None):
        super().__init__()
        block = block or BasicBlock
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for index, (count, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
            blocks = [block(cin, planes, 1 if index == 1 else 2)]
            cin = planes * block.expansion
            blocks += [block(cin, planes) for _ in range(count - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR-10 ResNet (6n + 2 layers) with projection shortcuts (option B)."""

    def __init__(self, n: int = 3, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        cin = 16
        for index, planes in enumerate((16, 32, 64), start=1):
            blocks = [BasicBlock(cin, planes, 1 if index == 1 else 2)]
            blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
            cin = planes
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.s2 = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.s4 = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.s2(self.c1(x).tanh())
        x = self.s4(self.c3(x).tanh())
        x = self.fc1(x.flatten(1)).tanh()
        return self.fc3(self.fc2(x).tanh())


class Bottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck (stride on the 3x3 conv, 'v1.5')."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def ResNet50(num_classes: int = 1000) -> ResNet:  # noqa: N802 (named like the class it builds)
    return ResNet((3, 4, 6, 3), num_classes, Bottleneck)


class AlexNet(nn.Module):
    """torchvision.models.alexnet."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class VGG16(nn.Module):
    """torchvision.models.vgg16 (configuration D)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, cin = [], 3
        for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                  512, 512, 512, "M"]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 49, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    def __init__(self, cin, ch1, ch3r, ch3, ch5r, ch5, proj):
        super().__init__()
        self.branch1 = BasicConv2d(cin, ch1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, ch3r, kernel_size=1),
                                     BasicConv2d(ch3r, ch3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, ch5r, kernel_size=1),
                                     BasicConv2d(ch5r, ch5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True),
                                     BasicConv2d(cin, proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    """torchvision.models.googlenet(aux_logits=False, init_weights=False)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = BasicConv2d(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        for name in ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a",
                     "inception3b", "maxpool3", "inception4a", "inception4b", "inception4c",
                     "inception4d", "inception4e", "maxpool4", "inception5a", "inception5b",
                     "avgpool"):
            x = getattr(self, name)(x)
        return self.fc(self.dropout(x.flatten(1)))


class DoubleConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


class Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.upconv = nn.ConvTranspose2d(cin, cout, 2, 2)
        self.conv = DoubleConv(2 * cout, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([skip, self.upconv(x)], 1))


class UNet(nn.Module):
    """The 'same'-padding U-Net of specs/unet.yaml, with its names (``conv`` and ``up``:
    the encoder's and decoder's blocks)."""

    def __init__(self, cin=1, classes=2, base=64, conv=DoubleConv, up=Up):
        super().__init__()
        self.enc1, self.enc2 = conv(cin, base), conv(base, 2 * base)
        self.enc3, self.enc4 = conv(2 * base, 4 * base), conv(4 * base, 8 * base)
        self.bottleneck = conv(8 * base, 16 * base)
        self.dec4, self.dec3 = up(16 * base, 8 * base), up(8 * base, 4 * base)
        self.dec2, self.dec1 = up(4 * base, 2 * base), up(2 * base, base)
        self.head = nn.Conv2d(base, classes, 1)

    def forward(self, x):
        pool = nn.functional.max_pool2d
        e1 = self.enc1(x)
        e2 = self.enc2(pool(e1, 2))
        e3 = self.enc3(pool(e2, 2))
        e4 = self.enc4(pool(e3, 2))
        b = self.bottleneck(pool(e4, 2))
        return self.head(self.dec1(self.dec2(self.dec3(self.dec4(b, e4), e3), e2), e1))


def _make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1):
    """torchvision's Conv2dNormActivation with ReLU6."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                   bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    """torchvision.models.mobilenetv2.InvertedResidual."""

    def __init__(self, inp: int, oup: int, stride: int, t: int):
        super().__init__()
        hidden = int(round(inp * t))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [_conv_bn_relu6(inp, hidden, 1)] if t != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2: its module tree, so its state_dict names."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0):
        super().__init__()
        settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                    [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
        cin = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        features = [_conv_bn_relu6(3, cin, stride=2)]
        for t, c, n, s in settings:
            cout = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(_conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class FractalNet(nn.Module):
    """FractalNet for CIFAR as the authors' generator wires it (github.com/gustavla/
    fractalnet, generation/fractalnet.py): its loop over the steps of a block, for any
    number of columns, written out here without archc's expansion; conv units are conv
    (no bias) -> dropout -> batch norm -> ReLU; joins are means (inference)."""

    def __init__(self, columns: int = 3, filters=(64, 128, 256, 512, 512),
                 dropouts=(0.0, 0.1, 0.2, 0.3, 0.4), num_classes: int = 10, channels: int = 3):
        super().__init__()
        self.columns = columns
        self.block = nn.ModuleList()
        for out, rate in zip(filters, dropouts):
            units, made = nn.ModuleDict(), [0] * columns
            for step in range(2 ** (columns - 1)):
                for c in reversed(range(columns)):
                    if (step + 1) % 2 ** (columns - c - 1) == 0:
                        parts = [("conv", nn.Conv2d(channels if made[c] == 0 else out, out, 3,
                                                    padding=1, bias=False))]
                        parts += [("drop", nn.Dropout(rate))] if rate > 0 else []
                        parts += [("bn", nn.BatchNorm2d(out)), ("relu", nn.ReLU())]
                        units[f"col{c}_{made[c]}"] = nn.Sequential(OrderedDict(parts))
                        made[c] += 1
            self.block.append(units)
            channels = out
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        c_all, steps = self.columns, 2 ** (self.columns - 1)
        for units in self.block:
            lasts, made = [x] * c_all, [0] * c_all
            for step in range(steps):
                for c in reversed(range(c_all)):
                    if (step + 1) % 2 ** (c_all - c - 1) == 0:
                        lasts[c] = units[f"col{c}_{made[c]}"](lasts[c])
                        made[c] += 1
                if step == steps - 1:
                    lasts = [nn.functional.max_pool2d(t, 2) for t in lasts]
                for c in range(c_all):
                    if step % 2 ** (2 + c) == 2 ** (1 + c) - 1:
                        joined = torch.stack(lasts[-(2 + c):]).mean(dim=0)
                        lasts[c_all - 2 - c:] = [joined] * (2 + c)
                        break
            x = lasts[0]
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


class UNetPlusPlus(nn.Module):
    """UNet++ as its authors' Keras code builds it (github.com/MrGiovanni/UNetPlusPlus):
    the grid of nodes X(i, j) made by a loop over j (the spec writes each node out), with
    the names of specs/unet_plus_plus.yaml; dropout left out (inference)."""

    def __init__(self, cin=3, classes=1, base=32, deep_supervision=False):
        super().__init__()
        self.deep = deep_supervision
        widths = [base * 2 ** i for i in range(5)]

        def unit(a, b):
            return nn.Sequential(OrderedDict([("conv1", nn.Conv2d(a, b, 3, padding=1)),
                                              ("relu1", nn.ReLU()),
                                              ("conv2", nn.Conv2d(b, b, 3, padding=1)),
                                              ("relu2", nn.ReLU())]))

        for i, w in enumerate(widths):
            setattr(self, f"conv{i}_0", unit(cin if i == 0 else widths[i - 1], w))
        for j in range(1, 5):
            for i in range(5 - j):
                setattr(self, f"up{i}_{j}", nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2))
                setattr(self, f"conv{i}_{j}", unit(widths[i] * (j + 1), widths[i]))
        for j in (range(1, 5) if deep_supervision else [4]):
            setattr(self, f"final{j}", nn.Conv2d(base, classes, 1))

    def forward(self, x):
        nodes = {}
        for i in range(5):
            x = getattr(self, f"conv{i}_0")(x if i == 0 else nn.functional.max_pool2d(x, 2))
            nodes[i, 0] = x
        for j in range(1, 5):
            for i in range(5 - j):
                up = getattr(self, f"up{i}_{j}")(nodes[i + 1, j - 1])
                earlier = [nodes[i, k] for k in range(j)]
                nodes[i, j] = getattr(self, f"conv{i}_{j}")(torch.cat([up] + earlier, 1))
        heads = [getattr(self, f"final{j}")(nodes[0, j]) for j in
                 (range(1, 5) if self.deep else [4])]
        return torch.stack(heads).mean(dim=0)


class GridAttention(nn.Module):
    """Attention U-Net's gate (the authors' GridAttentionBlock2D, sub-sampling 2)."""

    def __init__(self, channels, gating):
        super().__init__()
        inter = channels // 2
        self.theta = nn.Conv2d(channels, inter, 2, 2, bias=False)
        self.phi = nn.Conv2d(gating, inter, 1)
        self.psi = nn.Conv2d(inter, 1, 1)
        self.W = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x, g):
        alpha = torch.sigmoid(self.psi(torch.relu(self.theta(x) + self.phi(g))))
        alpha = nn.functional.interpolate(alpha, size=x.shape[2:], mode="bilinear",
                                          align_corners=False)
        return self.W(x * alpha)


class DoubleConvBN(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class AttentionUp(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.gate = GridAttention(cout, cin)
        self.upconv = nn.ConvTranspose2d(cin, cout, 2, 2)
        self.conv = DoubleConvBN(2 * cout, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([self.gate(skip, x), self.upconv(x)], 1))


class AttentionUNet(UNet):
    """specs/attention_unet.yaml: U-Net with batch norm whose skips pass attention gates."""

    def __init__(self, cin=1, classes=2, base=64):
        super().__init__(cin, classes, base, conv=DoubleConvBN, up=AttentionUp)



def _conv_norm_act(cin, cout, k=1, stride=1, groups=1, act=nn.Hardswish):
    """torchvision's Conv2dNormActivation (eps 0.001 as MobileNetV3 builds it)."""
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout, eps=0.001)]
    return nn.Sequential(*layers, *([act()] if act is not None else []))


class SqueezeExcitation(nn.Module):
    def __init__(self, channels):
        super().__init__()
        squeeze = _make_divisible(channels // 4, 8)
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))


class MobileNetV3Block(nn.Module):
    """torchvision's InvertedResidual for MobileNetV3."""

    def __init__(self, cin, k, expanded, cout, se, act, stride):
        super().__init__()
        act = nn.Hardswish if act == "hardswish" else nn.ReLU
        layers = [_conv_norm_act(cin, expanded, act=act)] if expanded != cin else []
        layers.append(_conv_norm_act(expanded, expanded, k, stride, expanded, act=act))
        layers += [SqueezeExcitation(expanded)] if se else []
        layers.append(_conv_norm_act(expanded, cout, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.block(x)
        return y + x if self.residual else y


MOBILENET_V3_LARGE = [  # torchvision's inverted_residual_setting for mobilenet_v3_large
    (16, 3, 16, 16, False, "relu", 1), (16, 3, 64, 24, False, "relu", 2),
    (24, 3, 72, 24, False, "relu", 1), (24, 5, 72, 40, True, "relu", 2),
    (40, 5, 120, 40, True, "relu", 1), (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hardswish", 2), (80, 3, 200, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1), (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 480, 112, True, "hardswish", 1), (112, 3, 672, 112, True, "hardswish", 1),
    (112, 5, 672, 160, True, "hardswish", 2), (160, 5, 960, 160, True, "hardswish", 1),
    (160, 5, 960, 160, True, "hardswish", 1)]


class MobileNetV3LargeFPN(nn.Module):
    """fasterrcnn_mobilenet_v3_large_fpn's backbone (BackboneWithFPN over features.13 and
    features.16, LastLevelMaxPool), the RPN head and the box head, with torchvision's
    names; forward returns the three FPN levels."""

    def __init__(self, classes: int = 91, anchors: int = 15):
        super().__init__()
        features = [_conv_norm_act(3, 16, 3, 2)]
        features += [MobileNetV3Block(*row) for row in MOBILENET_V3_LARGE]
        features.append(_conv_norm_act(160, 960))
        self.backbone = nn.Module()
        self.backbone.body = nn.Module()
        self.backbone.body.features = nn.Sequential(*features)
        self.backbone.fpn = nn.Module()
        self.backbone.fpn.inner_blocks = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, 256, 1)) for c in (160, 960)])
        self.backbone.fpn.layer_blocks = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(256, 256, 3, padding=1)) for _ in range(2)])
        self.rpn = nn.Module()
        self.rpn.head = nn.Module()
        self.rpn.head.conv = nn.Sequential(nn.Sequential(nn.Conv2d(256, 256, 3, padding=1)))
        self.rpn.head.cls_logits = nn.Conv2d(256, anchors, 1)
        self.rpn.head.bbox_pred = nn.Conv2d(256, 4 * anchors, 1)
        self.roi_heads = nn.Module()
        self.roi_heads.box_head = nn.Module()
        self.roi_heads.box_head.fc6 = nn.Linear(256 * 7 * 7, 1024)
        self.roi_heads.box_head.fc7 = nn.Linear(1024, 1024)
        self.roi_heads.box_predictor = nn.Module()
        self.roi_heads.box_predictor.cls_score = nn.Linear(1024, classes)
        self.roi_heads.box_predictor.bbox_pred = nn.Linear(1024, 4 * classes)

    def forward(self, x):
        feats, fpn = self.backbone.body.features, self.backbone.fpn
        c4 = feats[:14](x)
        c5 = feats[14:](c4)
        top = fpn.inner_blocks[1](c5)
        p1 = fpn.layer_blocks[1](top)
        lateral = fpn.inner_blocks[0](c4)
        p0 = fpn.layer_blocks[0](lateral + nn.functional.interpolate(top, size=lateral.shape[-2:]))
        return p0, p1, nn.functional.max_pool2d(p1, 1, 2)
