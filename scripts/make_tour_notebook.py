"""Write notebooks/tour.ipynb (stored without outputs; tests execute it on a tiny model)."""

from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = [
    md("# A tour of ablate\n\n"
       "Load a shipped network, delete a block inside a `with` block, sweep every block, plot "
       "inline, measure the gradient carried by paths of each length, and ask whether captum's "
       "attributions predict what deletion does. Every step is the library API the commands "
       "use. The parameters below come from the environment so the test suite can run this "
       "notebook on a tiny model; by default it uses the bundled `resnet20` and `plain20` and "
       "the bundled pristine CIFAR-10 test split."),
    code("import os\n\n"
         "import matplotlib.pyplot as plt\n"
         "import pandas as pd\n"
         "import torch\n\n"
         "import ablate\n"
         "from ablate import data\nfrom ablate.measures import paths as path_stats\n\n"
         "RESNET = os.environ.get('ABLATE_TOUR_RESNET', 'resnet20')\n"
         "PLAIN = os.environ.get('ABLATE_TOUR_PLAIN', 'plain20')\n"
         "DATA = os.environ.get('ABLATE_TOUR_DATA')  # None: the bundled CIFAR-10 test split\n"
         "LIMIT = int(os.environ.get('ABLATE_TOUR_LIMIT', '1000'))\n"
         "device = 'cuda' if torch.cuda.is_available() else 'cpu'"),
    md("## Load a network and its data\n\n`ablate.load` finds bundled checkpoints by name "
       "(or takes `checkpoint=PATH`); the result carries its normalisation and provenance."),
    code("net = ablate.load(RESNET, device=device)\n"
         "ds = data.load(DATA, 'test').subset(LIMIT)\n"
         "print(net.name, net.sha256[:12], ds)\n"
         "pd.DataFrame([(b.index, b.name, b.stage, b.changes_shape) for b in "
         "ablate.blocks(net.model)],\n"
         "             columns=['index', 'name', 'stage', 'changes shape']).head(12)"),
    md("## Delete one block inside a `with` block\n\nOn exit the model is exactly as it was: "
       "no hooks, parameters and buffers bitwise equal."),
    code("norm = dict(mean=net.mean, std=net.std)\n"
         "intact = ablate.evaluate(net.model, ds.images, ds.labels, **norm)\n"
         "with ablate.delete(net.model, [1]):\n"
         "    lesioned = ablate.evaluate(net.model, ds.images, ds.labels, **norm)\n"
         "after = ablate.evaluate(net.model, ds.images, ds.labels, **norm)\n"
         "print(f'intact {intact.error:.2%}, block 1 deleted {lesioned.error:.2%}, '\n"
         "      f'restored {after.error:.2%}')\n"
         "assert after.errors == intact.errors"),
    md("## Sweep every block, ResNet against its plain twin (Veit et al. Fig. 3)\n\n"
       "`analyses.delete_block.run` evaluates all deletions in batched passes and returns a "
       "tidy table; `figures.delete_block.plot` draws it."),
    code("from analyses import delete_block\n"
         "from figures import delete_block as fig\n\n"
         "nets = [net, ablate.load(PLAIN, device=device)]\n"
         "df = pd.concat([delete_block.run(m, ds, progress=False) for m in nets])\n"
         "fig.plot(df, note=f'{ds.name}, {len(ds)} images')"),
    code("df.groupby('model')[['error', 'error_change', 'p_value']].median()"),
    md("## Gradient per path length (Veit et al. section 5)\n\n"
       "In the backward pass only k random blocks pass gradient through their residual "
       "branch; the rest pass it through the shortcut. The norm of the input gradient per k, "
       "times the number of paths of length k, gives the total gradient per length."),
    code("x = data.normalize(ds.images[:32], net.mean, net.std).to(device)\n"
         "y = ds.labels[:32].to(device)\n"
         "n = len(path_stats.residual_blocks(net.model))\n"
         "ks = list(range(0, n + 1, max(1, n // 8)))\n"
         "if ks[-1] != n:\n"
         "    ks.append(n)\n"
         "g = torch.Generator().manual_seed(0)\n"
         "mag = [float(path_stats.path_gradient(net.model, x, y, k, 4, g)['input'].mean()) "
         "for k in ks]\n"
         "total = path_stats.total_gradient(path_stats.path_counts(n, log=True),\n"
         "                                  path_stats.log_interpolate(ks, mag, n))\n"
         "r = path_stats.effective_range(total, 0.9, path_stats.length_distribution(n))\n"
         "fig_, ax = plt.subplots(1, 2, figsize=(7, 2.5))\n"
         "ax[0].semilogy(ks, mag, 'o-'); ax[0].set(xlabel='path length k', "
         "ylabel='gradient norm (a.u.)')\n"
         "ax[1].plot(range(n + 1), total); ax[1].axvspan(r.lo, r.hi, alpha=0.2)\n"
         "ax[1].set(xlabel='path length k', ylabel='share of total gradient')\n"
         "print(f'90% of the gradient from paths {r.lo}-{r.hi} blocks long, '\n"
         "      f'{r.paths:.2%} of all paths')"),
    md("## Does attribution predict deletion?\n\ncaptum's layer gradient x activation on each "
       "block's output, against the error change measured by deleting that block."),
    code("from analyses import attribution\n\n"
         "att = attribution.run(net, ds.subset(min(len(ds), 64)), method='gradient_x_activation',"
         " progress=False)\n"
         "att.head()"),
    code("# Each row already holds the block's measured lesion damage beside its attribution.\n"
         "rho, p = attribution.spearman(att['attr_abs'], att['error_change'])\n"
         "print(f'Spearman rho = {rho:.2f} (p = {p:.2g}) over {len(att)} blocks')\n"
         "assert not any(m._forward_hooks for m in net.model.modules())  # captum cleaned up"),
]
for i, cell in enumerate(cells):  # stable ids: regenerating changes only what changed
    cell["id"] = f"cell-{i:02d}"
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
})
out = Path(__file__).resolve().parent.parent / "notebooks" / "tour.ipynb"
out.parent.mkdir(exist_ok=True)
nbf.write(nb, out)
print(out)
