"""Refuse names the generated service could not use, before any file is written.

Cookiecutter renders this file with the answers, then runs it; a non-zero exit
stops the generation. ``chassis new`` checks the same rules before it calls
cookiecutter; this hook is for the plain ``cookiecutter`` command.
"""

import keyword
import re
import sys

# The service-name rule of chassis.Service (``_NAME_OK`` in chassis/service.py).
NAME_OK = re.compile(r"[a-z][a-z0-9_-]{0,62}").fullmatch
# Packages the generated code imports: a project named after one would shadow it.
TAKEN = frozenset({"aiohttp", "chassis", "pydantic", "pytest", "tests"})

service_name = {{ cookiecutter.service_name | tojson }}
project_slug = {{ cookiecutter.project_slug | tojson }}
package_name = {{ cookiecutter.__package_name | tojson }}


def problems() -> list[str]:
    found = []
    names = {"service_name": service_name, "project_slug": project_slug}
    if project_slug == service_name:
        del names["project_slug"]  # one message for one bad name
    for what, name in names.items():
        if not NAME_OK(name):
            found.append(
                f"invalid {what} {name!r}: use 1-63 characters of a-z, 0-9, '-' and '_', "
                "starting with a letter"
            )
    if found:
        return found
    if keyword.iskeyword(package_name):
        clash = "is a Python keyword"
    elif package_name in getattr(sys, "stdlib_module_names", ()):
        clash = "would shadow the standard library's module"
    elif package_name in TAKEN:
        clash = "would shadow a package the service imports"
    else:
        return found
    found.append(
        f"package name {package_name!r} {clash}; choose another project_slug "
        f"(e.g. {project_slug}-service)"
    )
    return found


if __name__ == "__main__":
    refused = problems()
    for problem in refused:
        print(f"ERROR: {problem}", file=sys.stderr)
    sys.exit(1 if refused else 0)
