#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline against the official schemas.

    validate-k8s.py FILE...

Every document of every file must validate, strictly (no unknown fields), against each
Kubernetes version Parley supports; an object whose API has no schema (a removed or misspelled
apiVersion) is an error, not a warning.
"""
import sys

import kubernetes_validate
import yaml

# preStop `sleep` needs 1.30; the newest schemas bundled by kubernetes-validate.
VERSIONS = ["1.30.0", "1.37.0"]


def main(paths):
    failures = 0
    count = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            count += 1
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            for version in VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    failures += 1
                    print(f"{path}: {name} (Kubernetes {version}): {e.message} at {list(e.path)}")
                except kubernetes_validate.SchemaNotFoundError:
                    failures += 1
                    print(f"{path}: {name}: no schema for {doc.get('apiVersion')} in Kubernetes {version}")
    print(f"{count} objects, {len(VERSIONS)} Kubernetes versions, {failures} problems")
    return 1 if failures or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
