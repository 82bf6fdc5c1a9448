"""
Tests for the daemon's configuration: L{realtimed.config}, the twistd
plugin's options in L{realtimed.tap}, the plugin itself, and the generated
secrets of L{realtimed.keys}.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import tomllib

from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from realtimed.config import SETTINGS, SETTINGS_BY_NAME, ConfigError, load
from realtimed.keys import KEYS_FILE, resolve_keys
from realtimed.tap import Options

SECRET = "x" * 40
WHSEC = "whsec_" + base64.b64encode(b"k" * 32).decode()


class LoadTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        return path.path

    def test_defaults(self) -> None:
        """
        With nothing given, realtimed listens on tcp:8080 with the embedded
        database under ./realtimed-data and generated secrets.
        """
        config = load({}, {})
        self.assertEqual(config.port, ("tcp:8080",))
        self.assertIsNone(config.database_url)
        self.assertEqual(config.data_dir, "./realtimed-data")
        self.assertIsNone(config.jwt_secret)
        self.assertFalse(config.webhook_allow_private)
        self.assertEqual(config.webhook_retry_hours, 24.0)
        self.assertEqual(config.retention_interval, 60.0)
        self.assertEqual(config.log_format, "text")
        self.assertIsNone(config.metrics_port)

    def test_precedence(self) -> None:
        """
        The command line beats the environment, which beats the file, which
        beats the default.
        """
        path = self.write(
            'database-url = "postgresql://file/db"\n'
            'data_dir = "/from/file"\n'
            'port = ["tcp:1", "tcp:2"]\n'
            "webhook-allow-private = true\n"
        )
        environ = {
            "REALTIMED_DATABASE_URL": "postgresql://env/db",
            "REALTIMED_DATA_DIR": "/from/env",
        }
        config = load({"database-url": "postgresql://cli/db"}, environ, path)
        self.assertEqual(config.database_url, "postgresql://cli/db")
        self.assertEqual(config.data_dir, "/from/env")
        self.assertEqual(config.port, ("tcp:1", "tcp:2"))
        self.assertTrue(config.webhook_allow_private)

    def test_environment_kinds(self) -> None:
        """
        Environment values are text: lists split on whitespace, flags read
        true/false words, numbers parse.
        """
        config = load(
            {},
            {
                "REALTIMED_PORT": "tcp:1 unix:/tmp/s",
                "REALTIMED_WEBHOOK_ALLOW_PRIVATE": "yes",
                "REALTIMED_WEBHOOK_RETRY_HOURS": "2.5",
            },
        )
        self.assertEqual(config.port, ("tcp:1", "unix:/tmp/s"))
        self.assertTrue(config.webhook_allow_private)
        self.assertEqual(config.webhook_retry_hours, 2.5)

    def test_config_from_environment(self) -> None:
        """
        REALTIMED_CONFIG names the file when --config is not given.
        """
        path = self.write('data-dir = "/from/file"\n')
        self.assertEqual(load({}, {"REALTIMED_CONFIG": path}).data_dir, "/from/file")

    def test_operations_settings(self) -> None:
        """
        The log format, metrics endpoint and retention interval come from
        the file, the environment or the command line like every setting.
        """
        path = self.write(
            'log-format = "json"\nmetrics-port = "tcp:9464"\nretention-interval = 5\n'
        )
        config = load({}, {}, path)
        self.assertEqual(
            (config.log_format, config.metrics_port, config.retention_interval),
            ("json", "tcp:9464", 5.0),
        )
        config = load({"log-format": "text"}, {"REALTIMED_METRICS_PORT": "tcp:1"}, path)
        self.assertEqual((config.log_format, config.metrics_port), ("text", "tcp:1"))

    def test_presence_timeout(self) -> None:
        """
        The presence timeout is 20 seconds unless set, and must be more
        than 0 and at most an hour.
        """
        self.assertEqual(load({}, {}).presence_timeout, 20.0)
        self.assertEqual(load({}, {"REALTIMED_PRESENCE_TIMEOUT": "2.5"}).presence_timeout, 2.5)
        for bad in ("0", "3601"):
            self.assertError(
                "presence-timeout: must be more than 0 and at most 3600",
                {},
                {"REALTIMED_PRESENCE_TIMEOUT": bad},
            )

    def test_secret_file(self) -> None:
        """
        A secret may be read from a file (its trailing newline dropped), at
        any level; the file given at a higher level wins over a value below.
        """
        path = self.write(SECRET + "\n")
        self.assertEqual(load({"jwt-secret-file": path}, {}).jwt_secret, SECRET)
        self.assertEqual(
            load({}, {"REALTIMED_JWT_SECRET_FILE": path, "REALTIMED_API_KEY": "k" * 20}).jwt_secret,
            SECRET,
        )
        toml = self.write(f'jwt-secret-file = "{path}"\n')
        self.assertEqual(load({}, {}, toml).jwt_secret, SECRET)
        self.assertEqual(
            load({"jwt-secret-file": path}, {"REALTIMED_JWT_SECRET": "y" * 40}).jwt_secret,
            SECRET,
        )

    def test_secrets_not_in_repr(self) -> None:
        """
        A secret never shows in the configuration's repr, which logs use.
        """
        config = load({"jwt-secret": SECRET, "api-key": "k" * 20}, {})
        self.assertNotIn(SECRET, repr(config))
        self.assertNotIn("k" * 20, repr(config))

    def assertError(self, message: str, *args: object) -> None:
        with self.assertRaises(ConfigError) as raised:
            load(*args)  # type: ignore[arg-type]
        self.assertEqual(str(raised.exception), message)

    def test_errors(self) -> None:
        """
        Each unusable value is an error naming the setting and why.
        """
        self.assertError(
            "database-url: expected a postgresql:// URL", {"database-url": "mysql://x"}, {}
        )
        self.assertError(
            "jwt-secret: must be at least 32 bytes long for HS256", {"jwt-secret": "short"}, {}
        )
        self.assertError("api-key: must be at least 16 characters long", {"api-key": "short"}, {})
        self.assertError(
            "webhook-secret: expected whsec_ followed by base64", {"webhook-secret": "nope"}, {}
        )
        self.assertError(
            "webhook-allow-private: expected true or false, not 'maybe'",
            {},
            {"REALTIMED_WEBHOOK_ALLOW_PRIVATE": "maybe"},
        )
        self.assertError(
            "webhook-retry-hours: expected a number, not 'soon'",
            {},
            {"REALTIMED_WEBHOOK_RETRY_HOURS": "soon"},
        )
        self.assertError(
            "webhook-retry-hours: must be more than 0 and at most 720",
            {},
            {"REALTIMED_WEBHOOK_RETRY_HOURS": "0"},
        )
        self.assertError(
            "log-format: expected text or json, not 'xml'",
            {},
            {"REALTIMED_LOG_FORMAT": "xml"},
        )
        self.assertError(
            "retention-interval: must be more than 0 and at most 86400",
            {},
            {"REALTIMED_RETENTION_INTERVAL": "0"},
        )
        missing = self.mktemp()
        self.assertError(
            f"jwt-secret-file: cannot read {missing}: No such file or directory",
            {"jwt-secret-file": missing},
            {},
        )
        self.assertError(
            "jwt-secret: give jwt-secret or jwt-secret-file in the command line, not both",
            {"jwt-secret": SECRET, "jwt-secret-file": missing},
            {},
        )

    def test_file_errors(self) -> None:
        """
        A config file that is missing, not TOML, has an unknown key or a
        value of the wrong type is an error naming it.
        """
        missing = self.mktemp()
        self.assertError(
            f"config: cannot read {missing}: No such file or directory", {}, {}, missing
        )
        broken = self.write("port = [\n")
        with self.assertRaises(ConfigError) as raised:
            load({}, {}, broken)
        self.assertIn(f"config: {broken} is not valid TOML", str(raised.exception))
        unknown = self.write("colour = 1")
        self.assertError(f"config: unknown setting 'colour' in {unknown}", {}, {}, unknown)
        self.assertError("data-dir: expected a string", {}, {}, self.write("data-dir = 3"))
        self.assertError(
            "port: expected a string or a list of strings", {}, {}, self.write("port = 80")
        )
        self.assertError(
            "webhook-allow-private: expected true or false",
            {},
            {},
            self.write('webhook-allow-private = "yes"'),
        )


class OptionsTests(SynchronousTestCase):
    def parse(self, argv: list[str], environ: dict[str, str] | None = None) -> Options:
        options = Options(environ or {})
        options.parseOptions(argv)
        return options

    def test_every_setting_is_an_option(self) -> None:
        """
        Every setting can be given on the command line, and every secret
        also as --<name>-file.
        """
        names = set()
        for flag in Options.optFlags:
            names.add(flag[0])
        for parameter in Options.optParameters:
            names.add(parameter[0])
        names.update({"port", "cors-origin"})
        for setting in SETTINGS:
            self.assertIn(setting.name, names)
            if setting.secret:
                self.assertIn(setting.name + "-file", names)

    def test_repeatable_port(self) -> None:
        """
        --port and -p may be repeated; each endpoint is kept in order.
        """
        options = self.parse(["-p", "tcp:0", "--port", "unix:/tmp/realtimed.sock"])
        assert options.config is not None
        self.assertEqual(options.config.port, ("tcp:0", "unix:/tmp/realtimed.sock"))

    def test_command_line_beats_environment(self) -> None:
        """
        An option beats its REALTIMED_ variable; a flag left out does not
        override the environment.
        """
        options = self.parse(
            ["--data-dir", "/cli"],
            {"REALTIMED_DATA_DIR": "/env", "REALTIMED_WEBHOOK_ALLOW_PRIVATE": "true"},
        )
        assert options.config is not None
        self.assertEqual(options.config.data_dir, "/cli")
        self.assertIs(options.config.webhook_allow_private, True)

    def test_flag(self) -> None:
        """
        --webhook-allow-private sets the setting to True.
        """
        options = self.parse(["--webhook-allow-private"])
        assert options.config is not None
        self.assertIs(options.config.webhook_allow_private, True)

    def test_bad_endpoint(self) -> None:
        """
        An endpoint string Twisted cannot parse is a usage error naming
        --port.
        """
        with self.assertRaises(usage.UsageError) as raised:
            self.parse(["-p", "bogus:1"])
        self.assertIn("port: cannot use 'bogus:1'", str(raised.exception))
        with self.assertRaises(usage.UsageError) as raised:
            self.parse(["--metrics-port", "bogus:2"])
        self.assertIn("port: cannot use 'bogus:2'", str(raised.exception))

    def test_log_format(self) -> None:
        """
        --log-format is a realtimed option, checked at parse time.
        """
        self.assertEqual(self.parse(["--log-format", "json"]).config.log_format, "json")  # type: ignore[union-attr]
        with self.assertRaises(usage.UsageError) as raised:
            self.parse(["--log-format", "yaml"])
        self.assertIn("log-format: expected text or json", str(raised.exception))

    def test_systemd_endpoint_left_for_start_up(self) -> None:
        """
        A systemd: endpoint is accepted without being parsed, since parsing
        takes the sockets systemd handed over, which start-up needs.
        """
        options = self.parse(["-p", "systemd:domain=INET:index=0"])
        assert options.config is not None
        self.assertEqual(options.config.port, ("systemd:domain=INET:index=0",))

    def test_bad_value(self) -> None:
        """
        A bad value is a usage error that names the option and why.
        """
        with self.assertRaises(usage.UsageError) as raised:
            self.parse(["--jwt-secret", "short"])
        self.assertEqual(
            str(raised.exception), "jwt-secret: must be at least 32 bytes long for HS256"
        )


class PluginTests(SynchronousTestCase):
    def test_plugin_found(self) -> None:
        """
        twistd finds the realtimed plugin, which makes its service from
        realtimed.tap.
        """
        from twisted.application.service import IServiceMaker

        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("realtimed", makers)
        self.assertIs(makers["realtimed"].options, Options)


class KeysTests(SynchronousTestCase):
    def test_generated_once(self) -> None:
        """
        Unset secrets are generated on first start, kept in the data
        directory with mode 0600, and reused by later starts, which report
        nothing generated.
        """
        data_dir = self.mktemp()
        config = load({"data-dir": data_dir}, {})
        keys, generated = resolve_keys(config)
        self.assertEqual(sorted(generated), ["anon_key", "api_key", "jwt_secret", "webhook_secret"])
        self.assertTrue(keys.api_key.startswith("ik_"))
        self.assertTrue(keys.anon_key.startswith("anon_"))
        self.assertTrue(keys.webhook_secret.startswith("whsec_"))
        path = os.path.join(data_dir, KEYS_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        again, generated_again = resolve_keys(config)
        self.assertEqual(again, keys)
        self.assertEqual(generated_again, [])

    def test_configured_wins(self) -> None:
        """
        A configured secret is used as given and not written to the data
        directory.
        """
        data_dir = self.mktemp()
        config = load({"data-dir": data_dir, "jwt-secret": SECRET, "webhook-secret": WHSEC}, {})
        keys, generated = resolve_keys(config)
        self.assertEqual(keys.jwt_secret, SECRET)
        self.assertEqual(keys.webhook_secret, WHSEC)
        self.assertEqual(sorted(generated), ["anon_key", "api_key"])
        with open(os.path.join(data_dir, KEYS_FILE)) as f:
            self.assertNotIn("jwt_secret", json.load(f))


LIMITS = tuple(s.name for s in SETTINGS if s.limit)


def _number(text: str) -> float:
    """
    The number a documented default starts with (``45 s``, ``100 per s``).
    """
    return float(text.split()[0])


def _help_entries(text: str) -> dict[str, str]:
    """
    Each option of C{--help}'s text with its description, on one line.
    """
    entries: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        match = re.match(r"\s+(?:-\w, )?--([\w-]+)=?\s+(.*)", line)
        if match:
            name = match.group(1)
            entries[name] = match.group(2).strip()
        elif name and line.startswith(" "):
            entries[name] += " " + line.strip()
    return entries


def _table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """
    The rows of the first reStructuredText simple table after C{heading}:
    each option (``--name``) with the text of the other columns, one string
    per line of the row.
    """
    lines = text[text.index(heading + "\n") :].splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("====")][:3]
    rows: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines[borders[1] + 1 : borders[2]]:
        if line.startswith("``--"):
            name = line[4 : line.index("``", 4)]
            current = rows[name] = []
            line = line[line.index("``", 4) + 2 :]
        current.append(line.strip())
    return rows


class LimitSettingTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """
        The limits' defaults are the product contract's.
        """
        config = load({}, {})
        self.assertEqual(
            (
                config.max_body,
                config.connect_timeout,
                config.request_timeout,
                config.max_connections,
                config.max_connections_per_ip,
                config.max_subscriptions,
                config.max_publish_rate,
            ),
            (1024 * 1024, 45.0, 30.0, 100_000, 1000, 100, 100.0),
        )

    def test_sources(self) -> None:
        """
        Whole numbers come from the command line, the environment and the
        file; 0 turns a limit off; bad values name the setting.
        """
        config = load(
            {"max-connections": "0"},
            {"REALTIMED_MAX_SUBSCRIPTIONS": "7", "REALTIMED_MAX_PUBLISH_RATE": "2.5"},
        )
        self.assertEqual(
            (config.max_connections, config.max_subscriptions, config.max_publish_rate),
            (0, 7, 2.5),
        )
        for settings, environ, message in [
            ({"max-subscriptions": "many"}, {}, "max-subscriptions: expected a whole number"),
            ({}, {"REALTIMED_MAX_CONNECTIONS": "1.5"}, "max-connections: expected a whole"),
            ({"max-connections-per-ip": "-1"}, {}, "max-connections-per-ip: must be 0"),
            ({"max-body": "10"}, {}, "max-body: must be between 1024"),
            ({"connect-timeout": "0"}, {}, "connect-timeout: must be more than 0"),
            ({"request-timeout": "-1"}, {}, "request-timeout: must be more than 0"),
            ({}, {"REALTIMED_REQUEST_TIMEOUT": "soon"}, "request-timeout: expected a number"),
            ({"max-publish-rate": "-3"}, {}, "max-publish-rate: must be 0"),
        ]:
            with self.assertRaises(ConfigError) as raised:
                load(settings, environ)
            self.assertIn(message, str(raised.exception))

    def test_documented(self) -> None:
        """
        Every setting is listed with its default by ``twistd realtimed
        --help`` and, commented out, in ``etc/realtimed.toml``; the limits
        (the settings marked as such in code, and only those) have their
        defaults in the TOML example, in the "Limits" table of
        ``docs/behaviour.rst`` and in the README's options table.
        """
        top = FilePath(__file__).parent().parent()
        toml_text = top.child("etc").child("realtimed.toml").getContent().decode()
        behaviour = top.child("docs").child("behaviour.rst").getContent().decode()
        readme = top.child("README.rst").getContent().decode()
        help_text = _help_entries(str(Options()))
        self.assertEqual(
            LIMITS,
            (
                "max-body",
                "connect-timeout",
                "request-timeout",
                "max-connections",
                "max-connections-per-ip",
                "max-subscriptions",
                "max-publish-rate",
            ),
        )
        for setting in SETTINGS:
            name, default = setting.name, setting.default
            self.assertIn(name, help_text)
            if setting.described != setting.help:
                self.assertTrue(help_text[name].endswith(setting.described[-40:]), name)
                shown = setting.described[len(setting.help) :].strip()
                self.assertIn(shown, help_text[name], name)
            commented = [
                line[2:] for line in toml_text.splitlines() if line.startswith(f"# {name} = ")
            ]
            self.assertEqual(len(commented), 1, name)
            if setting.limit:
                # other settings may show an example instead of the default
                self.assertEqual(tomllib.loads(commented[0])[name], default, name)
        documented = _table_rows(behaviour, "Limits")
        self.assertEqual(sorted(documented), sorted(LIMITS))
        in_readme = {
            name: row[0].split()[-1] for name, row in _table_rows(readme, "Configuration").items()
        }
        for name in LIMITS:
            default = SETTINGS_BY_NAME[name].default
            self.assertEqual(_number(documented[name][0]), default, name)
            self.assertEqual(_number(in_readme[name]), default, name)
