"""A DDP-wrapped tuned backbone trains on CPU (gloo, 2 processes) without find_unused_parameters."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, world, port, method, backbone_name, out_dir):
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import build_backbone, flatten_outputs
    from mmssf.peft import apply_peft
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, size = build_backbone(backbone_name)
    apply_peft(model, dict(type=method))
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(rank)
    for _ in range(2):
        loss = sum(o.square().mean() for o in flatten_outputs(ddp(torch.randn(2, 3, *size))))
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    torch.save(trained, os.path.join(out_dir, f'rank{rank}.pth'))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize('method,backbone_name', [('SSF', 'mmdet_swin'), ('LoRA', 'mmseg_vit'),
                                                  ('VPTShallow', 'mmpretrain_vit')])
def test_ddp_two_steps(tmp_path, method, backbone_name):
    mp.spawn(_worker, args=(2, _free_port(), method, backbone_name, str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / 'rank0.pth')
    r1 = torch.load(tmp_path / 'rank1.pth')
    assert r0 and r0.keys() == r1.keys()
    for k in r0:  # gradients were all-reduced: both replicas took the same steps
        assert torch.allclose(r0[k], r1[k], atol=1e-6), k
