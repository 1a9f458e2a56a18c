"""Everything the six scripts need that is not their idea: the plumbing, one module per job.

    checks       one-line errors for bad input, atomic writes, devices, the scripts' entry point
    readers      the bytes of the published dataset files and images, read exactly and safely
    data         datasets as uint8 batches with a condition; which files each expects
    shapes       the built-in shapes dataset: drawing and measuring colour, size and position back
    conditions   what a condition is (class ids or vectors + a null mask); which image gets which seed
    stats        the streamed statistics the priors fit (per-class moments, k-means)
    checkpoint   what a checkpoint holds, written atomically and read without running code
    config       the run: its Config, command line, prior cache and resume (train.py only)
    samplefiles  sample files (.npz) and PNG grids: what sample.py writes and eval_fid.py reads
    features     the feature networks of the metric: Inception (inception.py) or the offline
                 classifier (classifier.py: python -m plumbing.classifier)

Imports point down: the scripts import this package, and nothing here imports a script, except
config.py, which reads the tables of names (prior.PRIORS, flow.COUPLINGS, unet.PRESETS) that
train.py's command line offers.
"""
