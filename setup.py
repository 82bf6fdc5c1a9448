from setuptools import find_packages, setup

setup(
    name="realtimed",
    version="0.1.0",
    description="Realtime messaging server for PostgreSQL-backed applications",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests*", "bench*"]) + ["twisted.plugins"],
    package_data={
        "realtimed": ["py.typed"],
        "realtimed.store": ["migrations/*.sql"],
        # The admin page, served as it is: no build step.
        "realtimed.admin": ["static/**/*", "VENDORED.rst", "package.json"],
    },
    install_requires=[
        "twisted[tls] >= 24.7, < 27",
        "autobahn >= 24.4, < 27",
        "txpostgres >= 1.7, < 2",
        "psycopg2-binary >= 2.9, < 3",
        "treq >= 23.11, < 27",
        "klein >= 24.8, < 26",
        "pyjwt >= 2.8, < 3",
        "attrs >= 23.2",
        "pgserver >= 0.1.4, < 0.2",
        "prometheus_client >= 0.20, < 1",
    ],
    extras_require={
        "test": [
            "hypothesis >= 6.100",
            "python-socketio[client] >= 5.11, < 6",
            "websocket-client >= 1.7",
            "requests >= 2.31",
            "standardwebhooks >= 1.0",
            "schemathesis >= 4.0, < 5",
            "selenium >= 4.20, < 5",
        ],
        "dev": [
            "ruff >= 0.6",
            "mypy >= 1.10",
            "mypy-zope >= 1.0",
            "types-psycopg2",
        ],
    },
)
