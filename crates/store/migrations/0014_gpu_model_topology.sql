-- How the GPUs of one board of a model connect, as the fleet file's `topology` says
-- (`nvswitch`, `groups:2,4`, `aligned`); NULL: the rule for the model's name.
ALTER TABLE gpu_models ADD COLUMN topology TEXT;
