# Sourced by the kind cluster scripts (integration/kind/cluster.sh, integration/kind/run-e2e.sh,
# integration/e2e/run.sh): where the cluster's state lives, decided once.
#   ROOT          the checkout
#   BUILD         build outputs and the cluster's files (kubeconfig, cluster.env, cluster-<name>/, e2e/ reports):
#                 $BUILD, default $ROOT/build; a relative BUILD is taken from ROOT
#   CLUSTER_NAME  the kind cluster's name, default pycni
# shellcheck shell=bash disable=SC2034  # the variables are the sourcing script's
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-$ROOT/build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
CLUSTER_NAME=${CLUSTER_NAME:-pycni}
