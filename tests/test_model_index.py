"""The model-zoo index (``configs/*/metafile.yml``, ``model-index.yml``) is what
``tools/misc/model_index.py`` generates from the READMEs and the registry, and valid for the
``modelindex`` package (``mim search``)."""
import glob
import importlib.util
import os.path as osp

from runner_utils import ROOT


def _tool():
    spec = importlib.util.spec_from_file_location(
        'model_index', osp.join(ROOT, 'tools', 'misc', 'model_index.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_index_is_current_and_valid(capsys):
    assert _tool().main(['--check']) == 0, capsys.readouterr().out


def test_every_zoo_config_is_one_model_with_its_count_and_paper_result():
    tool = _tool()
    models = {m['Config']: m for f in tool.method_folders() for m in tool.metafile(f)['Models']}
    configs = {osp.relpath(p, ROOT).replace(osp.sep, '/') for f in tool.method_folders()
               for p in glob.glob(osp.join(ROOT, 'configs', f, '*.py'))}
    assert set(models) == configs
    ssf = models['configs/ssf/ssf_vit-base-p16_in21k-pre_4xb64_cifar100-224px.py']
    assert ssf['Metadata']['Trainable Parameters'] == 282724 and ssf['Metadata']['Method'] == 'SSF'
    assert ssf['Results'] == [{'Task': 'Image Classification', 'Dataset': 'CIFAR-100',
                               'Metrics': {'Top 1 Accuracy': 93.99}}]
    coco = models['configs/ssf/ssf_mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
    assert [r['Metrics'] for r in coco['Results']] == [{'box AP': 34.9}, {'mask AP': 33.5}]
    collection = tool.metafile('ssf')['Collections'][0]
    assert collection['Name'] == 'SSF' and collection['Code'] == {'Source': ['mmssf/peft/ssf.py']}
    assert collection['Paper']['Title'].startswith('Scaling & Shifting Your Features')
