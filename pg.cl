timeout: failed to run command ‘actionstream’: No such file or directory
