"""torchvision's side of ``tools/input_benchmark.py`` (run in the compare venv).

    .venv-compare/bin/python tools/_torchvision_input.py --folder=/tmp/jpegs \
        [--image_size=224] [--workers=0] [--threads=1] [--batch=32] [--batches=8]

The same files and recipe as ours' ``strong`` views, two per image: a
``Dataset`` over the folder's JPEGs opened with PIL (``ImageFolder``'s loader),
``RandomResizedCrop(scale=(0.2, 1))``, flip, ``ColorJitter(0.4, 0.4, 0.4, 0.1)``
p 0.8, grayscale p 0.2, ``GaussianBlur`` (kernel ~10% of the side, sigma 0.1-2) p
0.5, ``ToTensor``; a ``DataLoader`` with ``--workers`` worker processes (0: the main
process) and ``torch.set_num_threads(--threads)``. Prints one JSON line per timing
(source images per second after one untimed batch).
"""

import argparse
import json
import os
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--folder", required=True)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms as T

    torch.set_num_threads(args.threads)
    size = args.image_size
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    view = T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        T.ToTensor(),
    ])
    files = sorted(os.path.join(args.folder, f) for f in os.listdir(args.folder)
                   if f.endswith(".jpg"))

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with open(files[i], "rb") as f:
                image = Image.open(f).convert("RGB")  # ImageFolder's pil_loader
            return view(image), view(image)

    loader = torch.utils.data.DataLoader(Views(), batch_size=args.batch, shuffle=True,
                                         num_workers=args.workers, drop_last=True)
    for _ in range(args.repeats):
        it = iter(loader)
        next(it)
        t = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        rate = args.batches * args.batch / (time.perf_counter() - t)
        print(json.dumps({"tool": "torchvision_input", "torch": torch.__version__,
                          "torchvision": torchvision.__version__,
                          "workers": args.workers, "threads": args.threads,
                          "images": len(files), "image_size": size,
                          "batch": args.batch, "measure": "images_per_sec",
                          "value": round(rate, 1)}), flush=True)


if __name__ == "__main__":
    main()
