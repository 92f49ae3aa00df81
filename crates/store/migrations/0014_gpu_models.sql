-- How the GPUs of one board of a model connect, as the fleet file's `topology` says
-- (`nvswitch`, `groups:2,4`, `aligned`); NULL: the rule for the model's name.
ALTER TABLE gpu_models ADD COLUMN topology TEXT;
-- The GPU models an instance accepted (`gpu_models` of its launch), comma-separated; NULL
-- when it named one. `gpu_model` is the model it was placed on.
ALTER TABLE instances ADD COLUMN gpu_models TEXT;
