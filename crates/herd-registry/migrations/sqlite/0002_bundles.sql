-- herd registry schema v2: model versions as bundles. A version whose digest names a bundle
-- manifest lists its files here (path inside the model directory -> content digest, size); a
-- version with no rows is a one-file bundle whose digest is its model.onnx.
CREATE TABLE version_files (
    model   TEXT NOT NULL,
    version INTEGER NOT NULL,
    path    TEXT NOT NULL,
    digest  TEXT NOT NULL,
    size    INTEGER NOT NULL,
    PRIMARY KEY (model, version, path)
);
CREATE INDEX version_files_digest ON version_files (digest);
