def main():
    print("wgtune")
