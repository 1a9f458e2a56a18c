"""Everything the six scripts need that is not their idea: the plumbing, one module per job.

    checks       one-line errors for bad input (files read, flags, devices), the scripts' entry point
    outputs      what we write: checked before any work, atomic, one line on a full disk; the
                 one-run-per-folder lock
    readers      the bytes of the published dataset files and of images, read exactly and safely
    data         datasets as uint8 batches with a condition; which files each expects
    shapes       the built-in shapes dataset: drawing, and measuring colour, size and position back
    batches      which images each training step reads (a function of seed and step), prefetched
    conditions   what a condition is (class ids or vectors + a null mask); which image gets which seed
    stats        the streamed statistics the priors fit (per-class moments, k-means, EM)
    checkpoint   what a checkpoint holds, written atomically and read without running code
    config       the run: its Config, command line and resume (train.py's only)
    priorcache   the prior fitted once per run and cached, keyed by prior, options, code and data
    samplefiles  sample files (.npz) and PNG grids: what sample.py writes and eval_fid.py reads
    pairs        reflow pairs on disk: what sample.py --pairs writes and train.py --pairs reads
    features     the feature networks of the metric: Inception (inception.py) or the offline
                 classifier (classifier.py: python -m plumbing.classifier)

Imports point down: the scripts import this package, and nothing here imports a script, except
config.py and priorcache.py, which read the tables of names train.py's command line offers
(prior.PRIORS, flow.COUPLINGS, unet.PRESETS) and build the prior it names.
"""
