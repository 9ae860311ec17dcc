"""Minimal torch models with torchvision's structure and state_dict keys (torchvision itself
does not load here): ResNet (bottleneck), VGG, AlexNet, DenseNet.

Plain torch.nn layers in torchvision's order and names, so `load_state_dict(strict=True)`
takes a torchvision state_dict and `nn.Sequential(*list(net.children())[:-1])` is what the
reference code (kaschube-lab/LinkingInStyle) calls its feature extractor. tests/
test_feature_layer.py proves each against torchvision's own outputs (the fixtures'
`logits_224` / `r_224`) before using its children()[:-1] as the truth for lis_jax's
'reference' feature layer.
"""
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F


# ----------------------------------------------------------------------------- ResNet


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (v1.5: the stride on the 3x3 conv)."""
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
  """torchvision's ResNet with bottleneck blocks; children: conv1 ... layer4, avgpool, fc."""

  def __init__(self, layers=(3, 4, 6, 3), num_classes=1000):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
      setattr(self, f"layer{i + 1}", self._make_layer(planes, n, 1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * 4, num_classes)

  def _make_layer(self, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes * 4:
      downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * 4))
    layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * 4
    layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------- VGG, AlexNet


VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
             512, 512, 512, "M")


class VGG(nn.Module):
  """torchvision's VGG (no BatchNorm); children: features, avgpool, classifier."""

  def __init__(self, cfg=VGG16_CFG, num_classes=1000):
    super().__init__()
    layers, c = [], 3
    for v in cfg:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
        c = v
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class AlexNet(nn.Module):
  """torchvision's AlexNet; children: features, avgpool, classifier."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ----------------------------------------------------------------------------- DenseNet


class _DenseLayer(nn.Module):
  def __init__(self, c_in, growth, bn_size):
    super().__init__()
    self.norm1 = nn.BatchNorm2d(c_in)
    self.relu1 = nn.ReLU(inplace=True)
    self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
    self.norm2 = nn.BatchNorm2d(bn_size * growth)
    self.relu2 = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

  def forward(self, features):
    x = torch.cat(features, 1)
    return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class _DenseBlock(nn.ModuleDict):
  def __init__(self, n, c_in, growth, bn_size):
    super().__init__()
    for i in range(n):
      self.add_module(f"denselayer{i + 1}", _DenseLayer(c_in + i * growth, growth, bn_size))

  def forward(self, x):
    features = [x]
    for layer in self.values():
      features.append(layer(features))
    return torch.cat(features, 1)


class _Transition(nn.Sequential):
  def __init__(self, c_in, c_out):
    super().__init__()
    self.norm = nn.BatchNorm2d(c_in)
    self.relu = nn.ReLU(inplace=True)
    self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
    self.pool = nn.AvgPool2d(2, 2)


class DenseNet(nn.Module):
  """torchvision's DenseNet-BC; children: features (ends with norm5), classifier."""

  def __init__(self, growth=32, block_config=(6, 12, 24, 16), num_init=64, bn_size=4,
               num_classes=1000):
    super().__init__()
    mods = OrderedDict(conv0=nn.Conv2d(3, num_init, 7, 2, 3, bias=False),
                       norm0=nn.BatchNorm2d(num_init), relu0=nn.ReLU(inplace=True),
                       pool0=nn.MaxPool2d(3, 2, 1))
    c = num_init
    for i, n in enumerate(block_config):
      mods[f"denseblock{i + 1}"] = _DenseBlock(n, c, growth, bn_size)
      c += n * growth
      if i != len(block_config) - 1:
        mods[f"transition{i + 1}"] = _Transition(c, c // 2)
        c //= 2
    mods["norm5"] = nn.BatchNorm2d(c)
    self.features = nn.Sequential(mods)
    self.classifier = nn.Linear(c, num_classes)

  def forward(self, x):
    out = F.adaptive_avg_pool2d(F.relu(self.features(x)), (1, 1))
    return self.classifier(torch.flatten(out, 1))


# torchvision's constructors for the architectures the tests use.
MODELS = {
    "resnet50": lambda: ResNet((3, 4, 6, 3)),
    "vgg16": lambda: VGG(VGG16_CFG),
    "alexnet": AlexNet,
    "densenet121": lambda: DenseNet(32, (6, 12, 24, 16), 64),
    "densenet201": lambda: DenseNet(32, (6, 12, 48, 32), 64),
}
# The name of each model's last Linear layer (its input is the fixtures' r).
LAST_LINEAR = {"resnet50": "fc", "vgg16": "classifier.6", "alexnet": "classifier.6",
               "densenet121": "classifier", "densenet201": "classifier"}


def reference_extractor(net: nn.Module) -> nn.Module:
  """The reference code's feature extractor: `nn.Sequential(*list(net.children())[:-1])`."""
  return nn.Sequential(*list(net.children())[:-1])


@torch.no_grad()
def run(net: nn.Module, arch: str, x: torch.Tensor):
  """(logits, r_penultimate, r_reference) of `net` in eval mode on NCHW `x`, as numpy.

  r_penultimate: the input of the last Linear layer (a forward hook); r_reference:
  the reference extractor's output flattened with torch.flatten(., 1).
  """
  net.eval()
  seen = {}
  last = net.get_submodule(LAST_LINEAR[arch])
  hook = last.register_forward_hook(lambda m, inp, out: seen.update(r=inp[0].clone()))
  try:
    logits = net(x)
  finally:
    hook.remove()
  r_ref = torch.flatten(reference_extractor(net)(x), 1)
  return logits.numpy(), seen["r"].numpy(), r_ref.numpy()
