"""The tutorial's FCN8s layer structure, rebuilt only to test checkpoint compatibility.

It mirrors the seed's ``nn.SequentialCell`` nesting and ``nn.Conv2d``/``nn.Conv2dTranspose``
defaults (pad_mode 'same', no bias), which is what fixes the parameter names and shapes.
"""
import mindspore.nn as nn


def _block(channels):
    layers = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(c_in, c_out, kernel_size=3, weight_init="xavier_uniform"),
                   nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.SequentialCell(layers)


class SeedFCN8s(nn.Cell):
    def __init__(self, n_class=21):
        super().__init__()
        self.conv1 = _block([3, 64, 64])
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = _block([64, 128, 128])
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv3 = _block([128, 256, 256, 256])
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv4 = _block([256, 512, 512, 512])
        self.pool4 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv5 = _block([512, 512, 512, 512])
        self.pool5 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv6 = nn.SequentialCell(nn.Conv2d(512, 4096, kernel_size=7), nn.BatchNorm2d(4096), nn.ReLU())
        self.conv7 = nn.SequentialCell(nn.Conv2d(4096, 4096, kernel_size=1), nn.BatchNorm2d(4096), nn.ReLU())
        self.score_fr = nn.Conv2d(4096, n_class, kernel_size=1)
        self.upscore2 = nn.Conv2dTranspose(n_class, n_class, kernel_size=4, stride=2)
        self.score_pool4 = nn.Conv2d(512, n_class, kernel_size=1)
        self.upscore_pool4 = nn.Conv2dTranspose(n_class, n_class, kernel_size=4, stride=2)
        self.score_pool3 = nn.Conv2d(256, n_class, kernel_size=1)
        self.upscore8 = nn.Conv2dTranspose(n_class, n_class, kernel_size=16, stride=8)

    def construct(self, x):
        x3 = self.pool3(self.conv3(self.pool2(self.conv2(self.pool1(self.conv1(x))))))
        x4 = self.pool4(self.conv4(x3))
        score = self.score_fr(self.conv7(self.conv6(self.pool5(self.conv5(x4)))))
        fused = self.score_pool4(x4) + self.upscore2(score)
        return self.upscore8(self.score_pool3(x3) + self.upscore_pool4(fused))
