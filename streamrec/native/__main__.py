"""``python -m streamrec.native``: build the libraries into the cache, print their paths."""

from streamrec.native import build

for path in build():
    print(path)
