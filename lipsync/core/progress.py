"""Progress bars: every long loop of every stage shows one the same way (tqdm, imported lazily)."""


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``); ``enabled=False`` shows nothing."""
    from tqdm import tqdm  # tqdm is only needed where a bar is shown

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not enabled, **kwargs)
