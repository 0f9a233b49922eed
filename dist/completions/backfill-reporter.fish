# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_backfill_reporter_global_optspecs
    string join \n config= log-format= h/help V/version
end

function __fish_backfill_reporter_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_backfill_reporter_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_backfill_reporter_using_subcommand
    set -l cmd (__fish_backfill_reporter_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -l config -d 'The TOML config file [default: /etc/backfill-reporter/config.toml]' -r -F
complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -l log-format -d 'Log format on stderr: text for people and journald, json for log shippers' -r -f -a "text\t''
json\t''"
complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -s h -l help -d 'Print help'
complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -s V -l version -d 'Print version'
complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -f -a "run" -d 'Run the reporter: on the configured schedule until stopped, or once with --once'
complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -f -a "record" -d 'Look up one OTP send by its order id (the id your system gave the send), to debug a delivery. Exit 0 when found, 1 on a provider error, 2 on a usage or config error'
complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -f -a "migrate" -d 'Apply database migrations and say which were applied'
complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -f -a "check" -d 'Validate the config, connect to the database, check the source query\'s columns and print the next five fire times; nothing is sent. Exit 0 when all is well, 2 for a config problem, 3 when the database cannot be reached'
complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -f -a "history" -d 'Show recent submissions, newest first'
complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -f -a "status" -d 'Show every (app, MCC) pair: country, latest rate and outcome, baseline, the rates the provider accepted at the last 24 ticks as a sparkline (· where it accepted none), and whether its route-health alarm is firing'
complete -c backfill-reporter -n "__fish_backfill_reporter_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand run" -l deadline -d 'With --once: how long its pairs may be retried (while the provider is down, say); the run ends by then, its undelivered pairs failed with their last cause (or superseded by a newer tick). Never later than the schedule\'s next tick' -r
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand run" -l config -d 'The TOML config file [default: /etc/backfill-reporter/config.toml]' -r -F
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand run" -l log-format -d 'Log format on stderr: text for people and journald, json for log shippers' -r -f -a "text\t''
json\t''"
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand run" -l once -d 'Run one cycle now and exit (within --deadline): 0 when every pair succeeded, was skipped or superseded, 1 when any failed, was invalid or was left pending (interrupted), 2 on a config error, 3 when the database cannot be reached'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand run" -l dry-run -d 'With --once: print what would be sent, skipped or refused; send and write nothing'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand run" -s h -l help -d 'Print help'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand record" -l app-id -d 'The application the send belongs to (appId, 4-32 characters)' -r
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand record" -l account -d 'The provider account to ask as, from [[accounts]] (its key and secret sign the lookup); by default the account of --app-id, or the only account' -r
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand record" -l config -d 'The TOML config file [default: /etc/backfill-reporter/config.toml]' -r -F
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand record" -l log-format -d 'Log format on stderr: text for people and journald, json for log shippers' -r -f -a "text\t''
json\t''"
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand record" -l json -d 'Print the provider\'s JSON answer as received instead of a summary'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand record" -s h -l help -d 'Print help'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand migrate" -l config -d 'The TOML config file [default: /etc/backfill-reporter/config.toml]' -r -F
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand migrate" -l log-format -d 'Log format on stderr: text for people and journald, json for log shippers' -r -f -a "text\t''
json\t''"
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand migrate" -s h -l help -d 'Print help'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand check" -l config -d 'The TOML config file [default: /etc/backfill-reporter/config.toml]' -r -F
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand check" -l log-format -d 'Log format on stderr: text for people and journald, json for log shippers' -r -f -a "text\t''
json\t''"
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand check" -l offline -d 'Check the config and secrets only, without connecting anywhere (for ExecStartPre: a database outage must not keep the daemon from starting and waiting it out)'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand check" -s h -l help -d 'Print help'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand history" -l limit -d 'How many rows' -r
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand history" -l app-id -d 'Only this application' -r
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand history" -l mcc -d 'Only this country code (three digits)' -r
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand history" -l state -d 'Only this state' -r -f -a "pending\t''
succeeded\t''
failed\t''
skipped\t''
invalid\t''
superseded\t''"
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand history" -l account -d 'Only this provider account\'s submissions (a name from [[accounts]])' -r
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand history" -l config -d 'The TOML config file [default: /etc/backfill-reporter/config.toml]' -r -F
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand history" -l log-format -d 'Log format on stderr: text for people and journald, json for log shippers' -r -f -a "text\t''
json\t''"
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand history" -s h -l help -d 'Print help'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand status" -l app-id -d 'Only this application' -r
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand status" -l account -d 'Only this provider account\'s pairs (a name from [[accounts]])' -r
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand status" -l config -d 'The TOML config file [default: /etc/backfill-reporter/config.toml]' -r -F
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand status" -l log-format -d 'Log format on stderr: text for people and journald, json for log shippers' -r -f -a "text\t''
json\t''"
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand status" -l json -d 'Print a JSON array, one object per pair (`alarm` is true only while firing)'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand status" -s h -l help -d 'Print help'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand help; and not __fish_seen_subcommand_from run record migrate check history status help" -f -a "run" -d 'Run the reporter: on the configured schedule until stopped, or once with --once'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand help; and not __fish_seen_subcommand_from run record migrate check history status help" -f -a "record" -d 'Look up one OTP send by its order id (the id your system gave the send), to debug a delivery. Exit 0 when found, 1 on a provider error, 2 on a usage or config error'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand help; and not __fish_seen_subcommand_from run record migrate check history status help" -f -a "migrate" -d 'Apply database migrations and say which were applied'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand help; and not __fish_seen_subcommand_from run record migrate check history status help" -f -a "check" -d 'Validate the config, connect to the database, check the source query\'s columns and print the next five fire times; nothing is sent. Exit 0 when all is well, 2 for a config problem, 3 when the database cannot be reached'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand help; and not __fish_seen_subcommand_from run record migrate check history status help" -f -a "history" -d 'Show recent submissions, newest first'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand help; and not __fish_seen_subcommand_from run record migrate check history status help" -f -a "status" -d 'Show every (app, MCC) pair: country, latest rate and outcome, baseline, the rates the provider accepted at the last 24 ticks as a sparkline (· where it accepted none), and whether its route-health alarm is firing'
complete -c backfill-reporter -n "__fish_backfill_reporter_using_subcommand help; and not __fish_seen_subcommand_from run record migrate check history status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
