"""A study spec, from its file to checked training configs: reader (file and YAML), credentials
(the scan for secrets), params (searched parameters), model (StudySpec, load_spec), expand (the
configs a spec produces), limits, names (a study's name)."""
