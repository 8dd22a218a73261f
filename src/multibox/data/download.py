"""Fetching the demo dataset (BCCD) for users who are online.

Never needed when the data are already on disk, and never used by the tests.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import urllib.request
import zipfile

log = logging.getLogger(__name__)

BCCD_ARCHIVE = "https://github.com/Shenggan/BCCD_Dataset/archive/refs/heads/master.zip"


def download_bccd(dest: str, url: str = BCCD_ARCHIVE, timeout: float = 60.0) -> str:
    """Download BCCD (MIT licence) and unpack its VOC folders to ``dest/bccd``; returns that path."""
    target = os.path.join(dest, "bccd")
    if os.path.isdir(os.path.join(target, "Annotations")):
        return target
    log.info(f"downloading BCCD from {url} ...")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except OSError as e:
        raise RuntimeError(f"could not download BCCD ({e}); download it by hand and pass --data PATH") from e
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for member in z.namelist():
            parts = member.split("/")
            # BCCD_Dataset-master/BCCD/{Annotations,JPEGImages,ImageSets}/...
            if len(parts) > 3 and parts[1] == "BCCD" and member[-1] != "/" and ".." not in parts:
                out = os.path.join(tmp, *parts[2:])
                os.makedirs(os.path.dirname(out), exist_ok=True)
                with z.open(member) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    os.replace(tmp, target)
    return target
