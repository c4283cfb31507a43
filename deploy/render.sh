#!/bin/sh
# Print every Kubernetes manifest under deploy/k8s as one multi-document YAML stream, in the
# order kustomization.yaml lists them (namespace and CRD first, workloads last), so that
#   deploy/render.sh | kubectl apply -f -
# works with a plain kubectl, and `make k8s-render` needs neither kubectl nor kustomize.
# The manifests name their namespace themselves, so the output is complete as it stands.
set -eu
k8s="$(cd "$(dirname "$0")" && pwd)/k8s"

# the entries of the `resources:` list, one per line, in order
resources=$(awk '
    /^resources:/            { in_list = 1; next }
    in_list && /^[^ #-]/     { in_list = 0 }
    in_list && /^[ ]*- /     { sub(/^[ ]*- */, ""); sub(/[ ]*#.*$/, ""); print }
' "$k8s/kustomization.yaml")

if [ -z "$resources" ]; then
    echo "render.sh: no resources listed in $k8s/kustomization.yaml" >&2
    exit 1
fi

for file in $resources; do
    if [ ! -f "$k8s/$file" ]; then
        echo "render.sh: $file is listed in kustomization.yaml but missing" >&2
        exit 1
    fi
    printf -- '---\n# Source: deploy/k8s/%s\n' "$file"
    cat "$k8s/$file"
    # a file without a final newline must not glue its last line to the next marker
    [ -z "$(tail -c 1 "$k8s/$file")" ] || echo
done
