"""The plumbing every stage shares, below the stages (geometry <- headmodel <- io <- tracking, avatar, flametalk <- eval
<- pipeline / CLI): no module here imports a stage.

Modules:
    atomic   one atomic-write helper and the writers built on it (strict JSON with NaN as null, npz, PNG, torch, text,
             figures)
    media    video/audio through the bundled ffmpeg: probe, stream frames (resample/crop/resize), extract 16 kHz mono
             audio, write mp4; the crop box
    meta     the one ``meta.json`` schema of every stage (format version, stage, config, versions, inputs, outputs,
             timings, figures)
    subject  the SUBJECT folder contract: :class:`~.subject.SubjectWriter` builds one, :class:`~.subject.Subject` reads
             one
    training one resumable training loop (checkpoint of named stateful objects, RNG state, history, progress)
"""
