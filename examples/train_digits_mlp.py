"""Train an MLP on scikit-learn's digits (shipped with scikit-learn: no download) on the CPU,
once with adamfast.torch.AdamW and once with torch.optim.AdamW(fused=True).

The two runs start from the same weights and see the same batches; the only
change is the optimizer class, so the final accuracies should agree (up to a
few ulps of float32 rounding in the step).  It prints the time per step, split
into forward+backward and optimizer step.

    pip install scikit-learn
    python examples/train_digits_mlp.py [--epochs 30] [--hidden 1024]

The loop is an ordinary torch loop: a scheduler, zero_grad, backward, step.
Passing ``set_to_none=False`` to zero_grad keeps the gradients bound to
adamfast's flat buffer (one memset, no copy at the step); torch's default
(``set_to_none=True``) works too, with one gradient copy per step.
"""

import argparse
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import adamfast.torch as aft


def data(seed=0):
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    return Xtr, Xte, ytr, yte


def model(hidden, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def train(make_opt, args, Xtr, ytr, Xte, yte):
    net = model(args.hidden)
    opt = make_opt(net.parameters())
    steps_per_epoch = (len(Xtr) + args.batch - 1) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr,
                                                total_steps=args.epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(1)
    fb = st = 0.0
    steps = 0
    for _ in range(args.epochs):
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), args.batch):
            idx = perm[i:i + args.batch]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=False)
            loss = torch.nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx])
            loss.backward()
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            sched.step()
            fb += t1 - t0
            st += t2 - t1
            steps += 1
    with torch.no_grad():
        acc = (net(Xte).argmax(1) == yte).float().mean().item()
    params = sum(p.numel() for p in net.parameters())
    return acc, fb / steps * 1e3, st / steps * 1e3, params


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    Xtr, Xte, ytr, yte = data()
    runs = [("adamfast.torch.AdamW", lambda ps: aft.AdamW(ps, lr=args.lr, weight_decay=1e-2)),
            ("torch.optim.AdamW(fused=True)",
             lambda ps: torch.optim.AdamW(ps, lr=args.lr, weight_decay=1e-2, fused=True))]
    print(f"digits: {len(Xtr)} train / {len(Xte)} test, MLP 64-{args.hidden}-{args.hidden}-10, "
          f"{args.epochs} epochs, batch {args.batch}, torch threads {torch.get_num_threads()}")
    for name, make in runs:
        acc, fb, st, n = train(make, args, Xtr, ytr, Xte, yte)
        print(f"{name:<32} {n:,} params  fwd+bwd {fb:6.3f} ms/step  optimizer step "
              f"{st:6.3f} ms/step  test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
