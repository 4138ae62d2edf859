"""``nni.utils`` of the light ``nni`` module."""


def merge_parameter(base_params, override_params):
    """Override the values of ``base_params`` (a dict or an argparse Namespace) with the tuner's.

    Every overriding key must already exist in ``base_params``, with the same type unless the base
    value is None: a misspelled parameter raises ValueError, a wrong type TypeError.
    """
    if override_params is None:
        return base_params
    is_dict = isinstance(base_params, dict)
    for key, value in override_params.items():
        if is_dict:
            if key not in base_params:
                raise ValueError("Key '%s' not found in base parameters." % key)
            current = base_params[key]
        else:
            if not hasattr(base_params, key):
                raise ValueError("Key '%s' not found in base parameters." % key)
            current = getattr(base_params, key)
        if current is not None and type(current) is not type(value):
            raise TypeError(
                "Expected '%s' in override parameters to have type '%s', but found '%s'."
                % (key, type(current), type(value))
            )
        if is_dict:
            base_params[key] = value
        else:
            setattr(base_params, key, value)
    return base_params
