#!/usr/bin/env bash
# Builds the image with Cloud Build and deploys deploy/cloudrun/service.yaml.
# Usage: PROJECT=my-project REGION=europe-west1 deploy/cloudrun/deploy.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}"
REPO=${REPO:-claude-gateway}
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPO}/claude-gateway:$(git rev-parse --short HEAD)"
gcloud artifacts repositories describe "$REPO" --project "$PROJECT" --location "$REGION" >/dev/null 2>&1 \
  || gcloud artifacts repositories create "$REPO" --project "$PROJECT" --location "$REGION" --repository-format docker
gcloud builds submit --project "$PROJECT" --tag "$IMAGE" .
sed "s#IMAGE#${IMAGE}#" deploy/cloudrun/service.yaml \
  | gcloud run services replace - --project "$PROJECT" --region "$REGION"
gcloud run services describe claude-gateway --project "$PROJECT" --region "$REGION" --format 'value(status.url)'
