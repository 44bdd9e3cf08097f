"""Child-process target for test_accounting's peak-RSS check (imported by module name)."""


def touch(mib: int) -> int:
    import torch
    buf = torch.ones(mib * 2**20 // 4)  # written, so the pages are resident
    return int(buf.numel())
